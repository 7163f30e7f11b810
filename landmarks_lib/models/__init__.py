"""Layer 3, models: the networks and what they store. ``landmark`` (backbones and landmark heads), ``facebox`` (the
face-box localizer and its loss), ``codecs`` (target units: ``LandmarkCodec``, ``FaceBoxCodec``, ``choose``; no torch),
``checkpoint`` (the file format; no torch at import), ``networks`` (networks rebuilt from a checkpoint).
"""
