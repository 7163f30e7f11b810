"""``python -m landmarks_lib.predict``: the same as ``landmarks predict`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("predict", sys.argv[1:]))
