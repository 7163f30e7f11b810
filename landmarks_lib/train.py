"""``python -m landmarks_lib.train``: the same as ``landmarks train`` (``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("train", sys.argv[1:]))
