"""The names of the torch-side registries, without importing torch.

Specs validate names (`--model`, `--criterion`, ...) against these tuples, so that parsing and checking a
command line never loads torch. Each tuple must equal the real registry's names, in the same order (help
texts list them in that order): `tests/test_steps_and_spec.py::test_registry_names_match_the_registries`
fails when one is changed without the other.
"""

from __future__ import annotations

# ticketlab.data.DATASETS
DATASETS: tuple[str, ...] = ("mnist1d", "mnist", "fashion_mnist", "cifar10", "synthetic", "folder")

# ticketlab.models.MODELS
MODELS: tuple[str, ...] = (
    "lenet_300_100", "mlp", "mnist1d_mlp", "mnist1d_cnn", "conv2", "conv4", "conv6", "resnet20", "vgg16_bn",
    "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "vgg11_bn", "vgg13_bn", "vgg19_bn", "mnist1d_cnn_bn",
)

# ticketlab.models.INITS
INITS: tuple[str, ...] = ("kaiming_normal", "kaiming_uniform", "glorot_normal", "glorot_uniform")

# ticketlab.sparse.criteria.CRITERIA: the base criteria, then each signed one's _same_sign and _diff_sign
_BASE_CRITERIA = ("large_final", "small_final", "large_init", "small_init", "large_init_large_final",
                  "small_init_small_final", "magnitude_increase", "movement", "random")
_SIGNED_CRITERIA = ("large_final", "small_final", "large_init", "small_init", "large_init_large_final",
                    "small_init_small_final", "magnitude_increase", "movement")
CRITERIA: tuple[str, ...] = _BASE_CRITERIA + tuple(f"{name}_{sign}" for name in _SIGNED_CRITERIA
                                                   for sign in ("same_sign", "diff_sign"))

# ticketlab.sparse.actions.MASK_ONE_ACTIONS and MASK_ZERO_ACTIONS
MASK_ONE_ACTIONS: tuple[str, ...] = ("rewind", "reinit", "reshuffle", "constant", "signed_reinit", "signed_reshuffle",
                                     "signed_constant")
MASK_ZERO_ACTIONS: tuple[str, ...] = ("zero", "freeze_init", "freeze_init_zero_mask")

# ticketlab.sparse.supermask.METHODS
SUPERMASK_METHODS: tuple[str, ...] = ("bernoulli", "edge-popup")

# ticketlab.sparse.forget: the forgetting operations, the split modes of knowledge evolution, and what is frozen
FORGET_METHODS: tuple[str, ...] = ("llf", "ke", "random", "imp")
KE_SPLIT_MODES: tuple[str, ...] = ("kels", "wels")
REDRAWS: tuple[str, ...] = ("init", "zero")
FREEZE: tuple[str, ...] = ("none", "kept", "reset")

# ticketlab sparse-train: the methods (gmp: Zhu & Gupta; set, rigl: sparse/dynamic.GROWTH) and allocations
# (train/sparse_callbacks.ALLOCATIONS)
SPARSE_TRAIN_METHODS: tuple[str, ...] = ("gmp", "set", "rigl")
SPARSE_ALLOCATIONS: tuple[str, ...] = ("uniform", "erk", "global")

# ticketlab.sparse.at_init.METHODS (pruning at initialisation) and ticketlab.sparse.allocation.ALLOCATIONS
PRUNE_AT_INIT_METHODS: tuple[str, ...] = ("snip", "grasp", "synflow", "random", "magnitude")
ALLOCATIONS: tuple[str, ...] = ("global", "layerwise", "uniform", "erk")

# ticketlab lr-range: how the rate rises (train.optim.Schedule.range_test's curves)
LR_RANGE_CURVES: tuple[str, ...] = ("exp", "linear")
