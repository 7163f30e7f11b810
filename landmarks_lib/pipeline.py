"""``python -m landmarks_lib.pipeline``: the same as ``landmarks run`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("run", sys.argv[1:]))
