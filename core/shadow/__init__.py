"""ShadowLLM: which attention heads and MLP neurons matter for a given prompt, predicted once per prompt.

One forward + backward of the language-model loss gives the true importance of every head (the o_proj
input viewed per head) and neuron (the down_proj input); a small network reading layer 0's output at the
last prompt token predicts it; masks scale those inputs in the real forward pass.
"""

from core.shadow.importance import CRITERIA, Capture, UnitScores, capture
from core.shadow.masking import ShadowMask, SparsityError, check_sparsity, choose_mask, masked
from core.shadow.predictor import DEFAULT_DIR, ShadowConfig, ShadowPredictor

__all__ = [
    "CRITERIA",
    "DEFAULT_DIR",
    "Capture",
    "ShadowConfig",
    "ShadowMask",
    "ShadowPredictor",
    "SparsityError",
    "UnitScores",
    "capture",
    "check_sparsity",
    "choose_mask",
    "masked",
]
