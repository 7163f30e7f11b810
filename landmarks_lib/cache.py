"""``python -m landmarks_lib.cache``: the same as ``landmarks cache`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("cache", sys.argv[1:]))
