"""``python -m landmarks_lib.export``: the same as ``landmarks export`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("export", sys.argv[1:]))
