"""Layer 2, data: reading and preparing the data. ``tables`` (the contest's CSV readers), ``validate`` (a data folder's
checks with file and line), ``synthetic`` (the embedded default dataset), ``symmetry`` (the mirror permutation),
``cache`` (memory-mapped crops), ``loading`` (batches), ``augment`` and ``reframing`` (training augmentation).
"""
