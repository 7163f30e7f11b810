"""The ``landmarks`` command: one entry point over the commands of every layer.

``landmarks COMMAND [ARGS]`` (``landmarks COMMAND --help`` for each); ``python -m landmarks_lib.<module>`` (the
modules beside this one) is the same command. Each command's module is imported only when it runs, so ``landmarks
predict`` on an export folder never imports torch. Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import importlib
import sys

from .core import logs

# command -> (module with ``main(argv) -> int``, one line of help)
COMMANDS = {
    "run": ("landmarks_lib.runs.pipeline", "the four notebooks on a run folder: train, evaluate, submit (resumable)"),
    "train": ("landmarks_lib.runs.train", "the training notebook's job from the shell (also under torchrun)"),
    "predict": ("landmarks_lib.inference.predict", "landmarks of images, from a run folder or an export folder"),
    "export": ("landmarks_lib.inference.export", "a run's final model as an ONNX folder (torch-free prediction)"),
    "evaluate": ("landmarks_lib.runs.evaluate", "score a run on labelled faces: NME, AUC and FR, any format"),
    "compare": ("landmarks_lib.runs.compare", "compare run folders side by side"),
    "validate": ("landmarks_lib.data.validate", "check a data folder (tables and images), with file and line"),
    "params": ("landmarks_lib.core.params", "list every parameter with its default, scope and help"),
    "synthetic": ("landmarks_lib.data.synthetic", "write the embedded synthetic dataset"),
    "cache": ("landmarks_lib.data.cache", "list or clean the crop caches"),
}


def run_command(name: str, argv=None) -> int:
    """Run one command with its arguments (``argv`` without the command name); returns its exit status.

    Raises:
        KeyError: an unknown command name.
    """
    module, _ = COMMANDS[name]
    logs.show()
    return int(importlib.import_module(module).main(argv) or 0)


def usage() -> str:
    """The list of commands, one per line."""
    width = max(map(len, COMMANDS))
    lines = ["usage: landmarks COMMAND [ARGS]   (landmarks COMMAND --help)", "", "commands:"]
    lines += [f"  {k:<{width}}  {h}" for k, (_, h) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``landmarks COMMAND [ARGS]``: the console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"landmarks: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
