"""Layer 4, inference: from images to points. ``backends`` (onnxruntime and torch behind one numpy interface, export
folders), ``passes`` (input normalisation, flip TTA, face-box decoding: written once, in numpy), ``predictor``
(``Predictor``), ``export`` (ONNX export), ``predict`` (batch prediction, writers, the predict command), ``drawing``.
"""
