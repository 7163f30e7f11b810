"""Layer 8, runs: ``run_folder`` (``RunFolder``: every path of a run, its lock and ``--force``), ``workflow`` (the
notebooks' steps), ``pipeline`` (the runner: resume rule, notebook execution, reports), ``train`` (the training job
from the shell), ``compare`` (runs side by side).
"""
