"""Layer 5, evaluation: ``metrics`` (MSE, NME, CED), ``robustness`` (the re-framed validation set), ``submission``
(the contest's file and its checks), ``eda`` (dataset statistics).
"""
