"""``python -m landmarks_lib.evaluate``: the same as ``landmarks evaluate`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("evaluate", sys.argv[1:]))
