"""``python -m landmarks_lib.pipeline``: the same as ``landmarks run`` (run the four notebooks on a run folder: train, evaluate, predict the test set (resumable); ``landmarks_lib.cli``)."""

if __name__ == "__main__":
    import sys

    from landmarks_lib.cli import run_command

    sys.exit(run_command("run", sys.argv[1:]))
