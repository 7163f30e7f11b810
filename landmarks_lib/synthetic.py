"""``python -m landmarks_lib.synthetic``: the same as ``landmarks synthetic`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("synthetic", sys.argv[1:]))
