"""Experimental kernels kept beside the GPU benchmark, outside core.

Nothing in `core` imports this package. `scoring` fuses the predictor's q'.k' scoring with the GQA max and
ships a top-k selection; TokenButler in core still scores with `core.predictor` (plain torch). These stay
here, tested on CPU under TRITON_INTERPRET=1 (tests/test_kernels.py), until a decode path uses them.
"""
