"""Layer 6, training: ``engine`` (stages, ``train_one_epoch``, ``evaluate``, ``fit``), ``noise`` (label-noise finding),
``distributed`` (the process group), ``cpuload`` (opt-in OpenMP waiting for shared CPUs).
"""
