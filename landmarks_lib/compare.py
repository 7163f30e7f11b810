"""``python -m landmarks_lib.compare``: the same as ``landmarks compare`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("compare", sys.argv[1:]))
