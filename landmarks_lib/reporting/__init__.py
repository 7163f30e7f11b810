"""Layer 7, reporting: ``viz`` (every figure) and ``viewer`` (interactive HTML).
"""
