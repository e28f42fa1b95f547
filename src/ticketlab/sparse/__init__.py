"""Masks and sparsity, jaxpruner-style, as independent pieces (Frankle & Carbin 2019; Zhou et al. 2019):

count.py       THE count rule: how many of n weights/channels a fraction removes or a density keeps
criteria.py    scoring: a score per weight, higher is kept
allocation.py  how a target is split among layers: per-layer rates, layer-wise/global pools, uniform, ERK
schedule.py    the IMP level schedule: density (1-f)^l at level l
structure.py   sparsity types: unstructured weights (random ties) and BatchNorm channels (|gamma|)
prune.py       IMP pruning, the composition of the above
at_init.py     pruning at initialisation: SNIP, GraSP, SynFlow, random, magnitude scores, one or several rounds
mask.py        `Mask`: one bool tensor per prunable parameter
"""

from .mask import Mask
from .count import kept_count, pruned_count
from .criteria import CRITERIA, score
from .allocation import erk, layer_fractions, uniform
from .schedule import level_density, level_kept
from .prune import prune, random_mask_like

__all__ = ["Mask", "CRITERIA", "score", "layer_fractions", "prune", "random_mask_like", "kept_count", "pruned_count",
           "erk", "uniform", "level_density", "level_kept"]
