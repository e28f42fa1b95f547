"""Masks, mask criteria and pruning allocation (Frankle & Carbin 2019; Zhou et al. 2019)."""

from .mask import Mask
from .criteria import CRITERIA, score
from .prune import layer_fractions, prune, random_mask_like

__all__ = ["Mask", "CRITERIA", "score", "layer_fractions", "prune", "random_mask_like"]
