"""``python -m landmarks_lib.params``: the same as ``landmarks params`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("params", sys.argv[1:]))
