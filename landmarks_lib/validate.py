"""``python -m landmarks_lib.validate``: the same as ``landmarks validate`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("validate", sys.argv[1:]))
