"""thousand-landmarks: dense facial landmark detection for the Thousand Facial Landmarks task.

Coordinate convention (the only one used in this package)
--------------------------------------------------------
Points are ``(x, y)`` pairs in **continuous pixel coordinates**: pixel column ``i`` spans ``[i, i + 1)``, so the
centre of pixel ``(i, j)`` is at ``(i + 0.5, j + 0.5)``, the image spans ``[0, W] x [0, H]``, ``x`` grows to the
right and ``y`` grows downward. A horizontal flip maps ``x -> W - x``. Arrays of points are ``float32`` of shape
``[K, 2]`` or ``[N, K, 2]`` unless a docstring says otherwise. Files (``landmarks.csv``, submissions) hold *labels*,
pixel indices (label ``i`` is continuous ``i + 0.5``, ``core.coords.LABEL_OFFSET``); ``coords.labels_to_points`` and
``coords.points_to_labels`` convert at that boundary, and nowhere else (the integer labels are stored as ``int16``).
Libraries with another convention (torchvision v2 flips keypoints as ``W - 1 - x``) are converted at the boundary.

Layers, each importing only those before it (``tests/test_layers.py`` keeps them honest; ARCHITECTURE.md maps them):
``core`` < ``data`` < ``models`` < ``inference`` < ``evaluation`` < ``training`` < ``reporting`` < ``runs``, and
``cli`` (the ``landmarks`` command) above them all. ``landmarks_lib.Predictor`` is ``inference.predictor.Predictor``.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # messages are shown by ``core.logs.show``


def __getattr__(name):
    """``landmarks_lib.Predictor`` without importing torch at package import."""
    if name == "Predictor":
        from .inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'landmarks_lib' has no attribute {name!r}")
