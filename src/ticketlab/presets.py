"""Paper presets: published training recipes as named sets of setting values (torch-free data).

`--preset NAME` (or `preset = "NAME"` in a config file or a sweep file's [base]) applies a preset's
settings first; the config file's settings and the flags given then override them. A preset is nothing
but setting values: it is not itself part of a spec, so a run's folder (its hash) depends only on the
settings it ends with. `--preset frankle2019-lenet` and the same settings given as flags name the same
run folder, and a flag that overrides a preset's value counts like any other setting.

A preset has
  settings     the training recipe: data, model and training settings, which every experiment it is made
               for has;
  experiments  {experiment: settings of that experiment alone}: the experiments the preset applies to,
               each with its own settings (pruning rates, rewind points, ...), which override the recipe;
  source       the paper (and its table or figure) or the code the numbers come from;
  result       the published figure to compare with;
  note         what the paper leaves open, and what the preset cannot express.

Names are `<first author><year>-<model>`, or `openlth-<model>` for the reference framework's
(facebookresearch/open_lth) `--default_hparams`. `ticketlab presets` lists them;
`tests/test_presets.py` builds every (preset, experiment) spec and trains each preset for a few steps.

Step counts are given in iterations where the paper counts iterations and in epochs where it counts
epochs; ticketlab's MNIST and CIFAR-10 training sets are the full 60,000 and 50,000 images (some papers
held out a validation split: their epochs are then fewer iterations than ours).
"""

from __future__ import annotations

from typing import Any

from .errors import UserError

# The Conv-2/4/6 layer names of ticketlab.models.conv (convs.i, hidden.j, fc): the per-layer rates of
# Frankle & Carbin 2019 (conv 10% (Conv-6 15%), fully connected 20%, output 10% per round).
_CONV_LAYERS = {"conv2": 2, "conv4": 4, "conv6": 6}


def _conv_rates(model: str, conv: float) -> dict[str, float]:
    return {f"convs.{i}.weight": conv for i in range(_CONV_LAYERS[model])}


def _pruning(**rates) -> dict[str, dict]:
    """The same pruning settings for every experiment that prunes (lottery, deconstruct, stability), and LCA."""
    return {"lottery": rates, "deconstruct": dict(rates), "stability": dict(rates), "lca": {}}


_LTH_NOTE = ("Gaussian Glorot init as in the paper. Pruning per round: --prune-fraction for the hidden fully "
             "connected layers, --output-prune-fraction for the output layer, --layer-prune-fractions for the "
             "convolutions. The paper's dropout variants have no flag here. Levels are left at the default: the "
             "paper prunes until the curves end (LeNet to ~0.3%, conv nets to ~2-5%); give --levels.")

PRESETS: dict[str, dict[str, Any]] = {
    # ----------------------------------------------------------------- Frankle & Carbin 2019 (LTH, ICLR)
    "frankle2019-lenet": dict(
        source="Frankle & Carbin 2019, The Lottery Ticket Hypothesis (ICLR), Figure 2 (architecture table), Section 2",
        result="winning tickets at 51-21% weights learn faster and reach higher accuracy than LeNet (~98%); "
               "early-stop test accuracy stays above the dense net down to ~3.6% (Figure 3)",
        note="MNIST from your IDX files (--data-dir). " + _LTH_NOTE,
        settings=dict(dataset="mnist", model="lenet_300_100", init="glorot_normal", optimizer="adam", lr=1.2e-3,
                      batch_size=60, steps="50000it", eval_every="100it"),
        experiments=_pruning(prune_fraction=0.2, output_prune_fraction=0.1),
    ),
    "frankle2019-conv2": dict(
        source="Frankle & Carbin 2019 (ICLR), Figure 2 (architecture table), Section 3",
        result="dense Conv-2 ~65% on CIFAR-10; winning tickets up to ~3 points higher at ~9% weights (Figure 5)",
        note="CIFAR-10 from your cifar-10-batches-py folder. The paper states no augmentation: the preset turns it "
             "off. " + _LTH_NOTE,
        settings=dict(dataset="cifar10", augment=False, model="conv2", init="glorot_normal", optimizer="adam", lr=2e-4,
                      batch_size=60, steps="20000it", eval_every="500it"),
        experiments=_pruning(prune_fraction=0.2, output_prune_fraction=0.1, layer_prune_fractions=_conv_rates("conv2", 0.1)),
    ),
    "frankle2019-conv4": dict(
        source="Frankle & Carbin 2019 (ICLR), Figure 2 (architecture table), Section 3",
        result="dense Conv-4 ~72% on CIFAR-10; winning tickets up to ~3.5 points higher at ~11% weights (Figure 5)",
        note="CIFAR-10 from your cifar-10-batches-py folder; no augmentation, as in the paper. " + _LTH_NOTE,
        settings=dict(dataset="cifar10", augment=False, model="conv4", init="glorot_normal", optimizer="adam", lr=3e-4,
                      batch_size=60, steps="25000it", eval_every="500it"),
        experiments=_pruning(prune_fraction=0.2, output_prune_fraction=0.1, layer_prune_fractions=_conv_rates("conv4", 0.1)),
    ),
    "frankle2019-conv6": dict(
        source="Frankle & Carbin 2019 (ICLR), Figure 2 (architecture table), Section 3",
        result="dense Conv-6 ~78% on CIFAR-10; winning tickets up to ~3.3 points higher at ~15% weights (Figure 5)",
        note="CIFAR-10 from your cifar-10-batches-py folder; no augmentation, as in the paper. Conv-6 prunes its "
             "convolutions at 15% per round. " + _LTH_NOTE,
        settings=dict(dataset="cifar10", augment=False, model="conv6", init="glorot_normal", optimizer="adam", lr=3e-4,
                      batch_size=60, steps="30000it", eval_every="500it"),
        experiments=_pruning(prune_fraction=0.2, output_prune_fraction=0.1, layer_prune_fractions=_conv_rates("conv6", 0.15)),
    ),
    # --------------------------------------------------- Frankle, Dziugaite, Roy & Carbin 2020 (LMC, ICML)
    "frankle2020-resnet20": dict(
        source="Frankle et al. 2020, Linear Mode Connectivity and the Lottery Ticket Hypothesis (ICML), Table 1 "
               "(hyperparameters), Figures 3 and 5 (instability vs rewind point)",
        result="ResNet-20 91.7 ± 0.1% dense; IMP with rewinding matches it at 16.8% weights; stable (barrier < 2%) "
               "from k ~ 2000 iterations",
        note="CIFAR-10 from your cifar-10-batches-py folder; standard crop+flip augmentation. The table's 'Warmup' "
             "variant (lr 0.03 warmed up over 30K iterations) is --lr 0.03 --warmup 30000it; its 'Low' variant is "
             "--lr 0.01. Rewind points: stability copies at 0, 500, 2000 and 5000 iterations; lottery rewinds to "
             "2000 iterations (the paper's stable point). Global pruning at 20% per level, output layer included "
             "(the paper prunes all layers but does not single out the output layer: ambiguous). BatchNorm "
             "parameters and biases are never pruned.",
        settings=dict(dataset="cifar10", model="resnet20", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                      batch_size=128, steps="63000it", schedule="milestones", milestones=("32000it", "48000it"),
                      gamma=0.1, eval_every="1000it"),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global", rewind="2000it"),
            "stability": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global",
                              copy_steps=("0it", "500it", "2000it", "5000it")),
            "deconstruct": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global", rewind="2000it"),
            "lca": {},
        },
    ),
    "frankle2020-vgg16": dict(
        source="Frankle et al. 2020, Linear Mode Connectivity and the Lottery Ticket Hypothesis (ICML), Table 1, "
               "Figures 3 and 5",
        result="VGG-16 93.7 ± 0.1% dense; IMP with rewinding matches it at 1.5% weights; stable from k ~ 1000 "
               "iterations",
        note="CIFAR-10 from your folder; VGG-16 with BatchNorm (vgg16_bn). The table's 'Warmup' variant (lr 0.1 "
             "warmed up over 30K iterations) is --warmup 30000it; 'Low' is --lr 0.01. Rewind points: stability "
             "copies at 0, 500, 1000 and 2000 iterations; lottery rewinds to 1000 iterations. Global pruning at 20% "
             "per level; whether the output layer is pruned is not stated (here: yes, in the global pool).",
        settings=dict(dataset="cifar10", model="vgg16_bn", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                      batch_size=128, steps="63000it", schedule="milestones", milestones=("32000it", "48000it"),
                      gamma=0.1, eval_every="1000it"),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global", rewind="1000it"),
            "stability": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global",
                              copy_steps=("0it", "500it", "1000it", "2000it")),
            "deconstruct": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global", rewind="1000it"),
            "lca": {},
        },
    ),
    # ------------------------------------------------------------------ Renda, Frankle & Carbin 2020 (ICLR)
    "renda2020-resnet20": dict(
        source="Renda et al. 2020, Comparing Rewinding and Fine-tuning in Neural Network Pruning (ICLR), Section 4 "
               "and the authors' code (lottery-ticket/rewinding-iclr20-public: 182 epochs, lr 0.1 /10 at 91 and 136 "
               "epochs, wd 2e-4, batch 128, global pruning)",
        result="smallest density matching the dense accuracy, ResNet-20: fine-tuning 51.2%, weight rewinding "
               "21.0%, LR rewinding 16.8% (the authors' result data)",
        note="One preset; the retraining mode is left to the flag: --retrain rewind (weight rewinding; give the "
             "rewind point with --rewind, e.g. 4701it as in the authors' example), --retrain finetune --retrain-steps "
             "T (T at the final rate) or --retrain lr-rewind --retrain-steps T. The paper's CIFAR-10 schedule and "
             "weight decay (2e-4, also on BatchNorm) come from its code, which is written for ResNet-56 and reused "
             "for ResNet-20. Iterative pruning at 20% per level, one global threshold over every layer.",
        settings=dict(dataset="cifar10", model="resnet20", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4,
                      batch_size=128, steps="182ep", schedule="milestones", milestones=("91ep", "136ep"), gamma=0.1),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global"),
        },
    ),
    # --------------------------------------------------------- OpenLTH (facebookresearch/open_lth) defaults
    "openlth-lenet": dict(
        source="facebookresearch/open_lth, models/mnist_lenet.py default_hparams (mnist_lenet_300_100)",
        result="LeNet-300-100 ~98% on MNIST (OpenLTH's documented default; no table)",
        note="MNIST from your IDX files. Plain SGD (OpenLTH's momentum default is 0), 40 epochs, batch 128; global "
             "magnitude pruning at 20% per level with the output layer (fc.weight) never pruned.",
        settings=dict(dataset="mnist", model="lenet_300_100", init="kaiming_normal", optimizer="sgd", lr=0.1,
                      momentum=0.0, batch_size=128, steps="40ep"),
        experiments=_pruning(prune_fraction=0.2, output_prune_fraction=0.0, prune_scope="global"),
    ),
    "openlth-resnet20": dict(
        source="facebookresearch/open_lth, models/cifar_resnet.py default_hparams (cifar_resnet_20)",
        result="ResNet-20 ~91.7% on CIFAR-10 (as in Frankle et al. 2020)",
        note="CIFAR-10 from your folder, crop+flip augmentation. Global pruning at 20% per level, the output layer "
             "included (OpenLTH ignores no layer for ResNets). OpenLTH draws BatchNorm scales uniformly at init "
             "(batchnorm_init='uniform'); ticketlab starts them at 1: no flag.",
        settings=dict(dataset="cifar10", model="resnet20", init="kaiming_normal", optimizer="sgd", lr=0.1, momentum=0.9,
                      weight_decay=1e-4, batch_size=128, steps="160ep", schedule="milestones",
                      milestones=("80ep", "120ep"), gamma=0.1),
        experiments=_pruning(prune_fraction=0.2, output_prune_fraction=0.2, prune_scope="global"),
    ),
    "openlth-vgg16": dict(
        source="facebookresearch/open_lth, models/cifar_vgg.py default_hparams (cifar_vgg_16)",
        result="VGG-16 ~93.7% on CIFAR-10 (as in Frankle et al. 2020)",
        note="CIFAR-10 from your folder, crop+flip augmentation. Global pruning at 20% per level with the output "
             "layer (fc.weight) never pruned. BatchNorm scales start at 1 here (OpenLTH: uniform): no flag.",
        settings=dict(dataset="cifar10", model="vgg16_bn", init="kaiming_normal", optimizer="sgd", lr=0.1, momentum=0.9,
                      weight_decay=1e-4, batch_size=128, steps="160ep", schedule="milestones",
                      milestones=("80ep", "120ep"), gamma=0.1),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.0, prune_scope="global"),
            "deconstruct": dict(prune_fraction=0.2, output_prune_fraction=0.0, prune_scope="global"),
            "stability": dict(prune_fraction=0.2, output_prune_fraction=0.0, prune_scope="global"),
            "earlybird": {},
            "lca": {},
        },
    ),
    # -------------------------------------------------------------- Zhou, Lan, Liu & Yosinski 2019 (NeurIPS)
    "zhou2019-lenet": dict(
        source="Zhou et al. 2019, Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask (NeurIPS), "
               "Section 2 / Appendix, and the authors' code (uber-research/deconstructing-lottery-tickets: "
               "print_train_lottery_iterative_command.sh, train_supermask.py)",
        result="learned supermask on the untrained FC net: 95.3% MNIST without rescaling, up to 98.0% with it; "
               "untrained large_final_same_sign supermask ~86%; dense 97.4%",
        note="MNIST from your IDX files. Their code trains 55 epochs of a 55,000-image split at batch 60 (~50K "
             "iterations, as here). supermask: SGD lr 100, momentum 0.9, batch 250 as in the authors' command, "
             "which trains 2000 epochs; the preset keeps 50K iterations (give --steps 440000it for theirs). Their "
             "iterative runs go to 24 rounds (--levels 24 where you want all of them).",
        settings=dict(dataset="mnist", model="lenet_300_100", init="glorot_normal", optimizer="adam", lr=1.2e-3,
                      batch_size=60, steps="50000it", eval_every="1000it"),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.1),
            "deconstruct": dict(prune_fraction=0.2, output_prune_fraction=0.1),
            "supermask": dict(method="bernoulli", optimizer="sgd", lr=100.0, momentum=0.9, batch_size=250,
                              weights="init", rescale=True),
        },
    ),
    "zhou2019-conv4": dict(
        source="Zhou et al. 2019 (NeurIPS), Section 2 / Appendix, and the authors' code "
               "(print_train_lottery_iterative_command.sh: Conv4 34 epochs, Adam 3e-4, batch 60, prune_base 0.9,0.8,0.9)",
        result="learned supermask on untrained Conv4: 72.5% CIFAR-10 (best, with rescaling); dense 74.5%",
        note="CIFAR-10 from your folder, no augmentation. Their 34 epochs of a 45,000-image split are ~25.5K "
             "iterations (as here, 25500it). Supermask: SGD with momentum 0.9 and lr 100 as for the FC net; the "
             "paper does not restate the conv supermask rate or length, so those are a guess to check. Conv2 / "
             "Conv6 are frankle2019-conv2/-conv6 with --init glorot_normal (already) and --steps 20250it / 30000it.",
        settings=dict(dataset="cifar10", augment=False, model="conv4", init="glorot_normal", optimizer="adam", lr=3e-4,
                      batch_size=60, steps="25500it", eval_every="500it"),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.1, layer_prune_fractions=_conv_rates("conv4", 0.1)),
            "deconstruct": dict(prune_fraction=0.2, output_prune_fraction=0.1,
                                layer_prune_fractions=_conv_rates("conv4", 0.1)),
            "supermask": dict(method="bernoulli", optimizer="sgd", lr=100.0, momentum=0.9, batch_size=250,
                              weights="init", rescale=True),
        },
    ),
    # --------------------------------------------------------------------------- You et al. 2020 (ICLR)
    "you2020-vgg16": dict(
        source="You et al. 2020, Drawing Early-Bird Tickets (ICLR), Section 4.1 and the authors' code "
               "(GATECH-EIC/Early-Bird-Tickets)",
        result="early-bird tickets of VGG-16 on CIFAR-10 drawn at ~epoch 10-40 of 160 at p = 30/50/70%, retrained "
               "to about the dense accuracy (~93%); up to 4.7x less training energy",
        note="CIFAR-10 from your folder. L1 on BatchNorm scales 1e-4, FIFO of 5 masks, epsilon 0.1 (the "
             "defaults). Checked against the authors' code: main.py's defaults (SGD 0.1, momentum 0.9, weight decay "
             "1e-4, 160 epochs, x0.1 at 80 and 120, --s 1e-4, 5 masks, distance > 0.1 fails) and "
             "scripts/standard-train/search.sh (VGG-16, batch 256). The paper's PreResNet-101 is not a ticketlab "
             "model; for ResNets ticketlab prunes only inside blocks, where the authors' code scores every BatchNorm.",
        settings=dict(dataset="cifar10", model="vgg16_bn", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                      batch_size=256, steps="160ep", schedule="milestones", milestones=("80ep", "120ep"), gamma=0.1),
        experiments={
            "earlybird": dict(prune_ratios=(0.3, 0.5, 0.7), bn_penalty=1e-4, eb_epsilon=0.1, eb_window=5),
        },
    ),
    # ------------------------------------------------------------- Lan, Liu, Zhou & Yosinski 2019 (NeurIPS)
    "lan2019-mnist-fc": dict(
        source="Lan et al. 2019, LCA: Loss Change Allocation for Neural Network Training (NeurIPS), Section 2, and "
               "the authors' code (uber-research/loss-change-allocation, train.py defaults)",
        result="barely over 50% of parameters help (negative LCA) at any iteration; some layers hurt overall",
        note="MNIST from your IDX files; FC 784-100-50-10, He normal init, SGD momentum 0.9, batch 250, lr 0.01 "
             "(the code's default for SGD). LCA over the full training set, Simpson's rule adapted to 1e-3 (the "
             "defaults). The training length is not stated for this net: one epoch here; give --steps.",
        settings=dict(dataset="mnist", model="mlp", widths=(100, 50), init="kaiming_normal", optimizer="sgd", lr=0.01,
                      momentum=0.9, batch_size=250, steps="1ep", eval_every="20it"),
        experiments={"lca": {}, "lottery": dict(lca=True)},
    ),
    "lan2019-resnet20": dict(
        source="Lan et al. 2019 (NeurIPS), and the training command in the authors' README "
               "(uber-research/loss-change-allocation: --arch resnet --opt sgd --lr 0.1 --num_epochs 25)",
        result="learning is synchronised across layers; the last layer hurts early in training",
        note="CIFAR-10 from your folder; batch 250 (the code's default). LCA over the full training set is costly "
             "for ResNet-20: --lca-subset N measures it on N training images instead.",
        settings=dict(dataset="cifar10", model="resnet20", init="kaiming_normal", optimizer="sgd", lr=0.1, momentum=0.9,
                      batch_size=250, steps="25ep", eval_every="100it"),
        experiments={"lca": {}},
    ),
    # ------------------------------------------------ Zhou, Vani, Larochelle & Courville 2022 (ICLR)
    "zhou2022-resnet18-llf": dict(
        source="Zhou et al. 2022, Fortuitous Forgetting in Connectionist Networks (ICLR), Section 4 (later-layer "
               "forgetting), and the authors' code (hlml/fortuitous_forgetting: SGD 0.256, batch 32, cosine, 5 warmup "
               "epochs, label smoothing 0.1, 200 epochs per generation, reset from layer4)",
        result="Flower-102: LLF ~70.9% vs knowledge evolution ~63.5% vs one long training ~59.5% after 10 "
               "generations (as quoted from the paper's table; check before relying on it)",
        note="Flower-102 (or CUB, Aircraft, MIT67, Dogs) as image folders: --dataset folder --data-dir DIR with "
             "DIR/train/<class>/ and DIR/test/<class>/. ResNet-18 in torchvision's layout (the paper's "
             "Split_ResNet18 has the same layers). Forgotten layers are redrawn from ticketlab's init (the "
             "authors redraw with PyTorch's kaiming_uniform(a=sqrt 5)). Only the llf chain runs: add "
             "--methods llf,ke for knowledge evolution beside it.",
        settings=dict(dataset="folder", image_size=224, model="resnet18", optimizer="sgd", lr=0.256, momentum=0.9,
                      weight_decay=1e-4, batch_size=32, steps="200ep", schedule="cosine", warmup="5ep",
                      label_smoothing=0.1),
        experiments={
            "forget": dict(methods=("llf",), generations=10, reset_from="layer4", redraw="init", reset_bn=False),
        },
    ),
    # ----------------------------------------------------------------------------------- Greydanus 2020
    "greydanus2020-mnist1d": dict(
        source="Greydanus 2020, Scaling down Deep Learning (MNIST-1D), and the lottery-tickets notebook of "
               "greydanus/mnist1d (notebooks/lottery-tickets.ipynb)",
        result="at 92% sparsity: ticket 70.5%, ticket with reinitialised weights 67%, dense 64%, random mask 58% "
               "(the notebook's summary figure)",
        note="40-500-500-10 MLP, Adam 2e-2, batch 100, 1501 steps per round. The notebook prunes every layer, the "
             "output layer included, at the same rate (here: 20% per level for every layer), so --levels 11 reaches "
             "~9% weights. What ticketlab does not do as the notebook does: its second hidden layer is residual "
             "(h + relu(W h)), it prunes biases too, it uses PyTorch's default uniform init, it prunes over 100 "
             "rounds of linearly increasing sparsity, and its summary figure retrains the masks on a second MNIST-1D "
             "set (seed 43) for 6000 steps at batch 500. Measured here (2 seeds, level 11 = 8.6% weights): ticket 75.1, "
             "reinit 70.5, random mask 68.6, dense 63.1%: the notebook's ticket > reinit > dense, but the random mask "
             "stays above dense (random masks here keep every bias). With the output layer at half the rate (the "
             "default) the ticket equals its reinit (77.1 vs 76.8%).",
        settings=dict(dataset="mnist1d", model="mnist1d_mlp", widths=(500, 500), optimizer="adam", lr=2e-2,
                      batch_size=100, steps="1501it"),
        experiments={
            "lottery": dict(prune_fraction=0.2, output_prune_fraction=0.2, levels=11),
            "deconstruct": dict(prune_fraction=0.2, output_prune_fraction=0.2, levels=11),
            "stability": dict(prune_fraction=0.2, output_prune_fraction=0.2),
            "lca": {},
        },
    ),
}


def names() -> tuple[str, ...]:
    return tuple(PRESETS)


def unknown(name: str) -> UserError:
    return UserError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")


def values(name: str, experiment: str) -> dict[str, Any]:
    """The flat `{setting: value}` a preset gives an experiment (Python values, checked by `spec.build`)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise unknown(str(name))
    preset = PRESETS[name]
    if experiment not in preset["experiments"]:
        fits = [n for n, p in PRESETS.items() if experiment in p["experiments"]]
        raise UserError(f"preset {name!r} is for {', '.join(preset['experiments'])}, not {experiment}; presets for "
                        f"{experiment}: {', '.join(fits) or 'none'}")
    return {**preset["settings"], **preset["experiments"][experiment]}


def listing() -> str:
    """`ticketlab presets`: every preset with its settings, source, published figure and note."""
    lines = []
    for name, p in PRESETS.items():
        lines.append(name)
        lines.append(f"  source:      {p['source']}")
        lines.append(f"  published:   {p['result']}")
        lines.append(f"  settings:    {_fmt(p['settings'])}")
        for experiment, extra in p["experiments"].items():
            lines.append(f"  {experiment + ':':<12} {_fmt(extra) if extra else '(the settings above)'}")
        lines.append(f"  note:        {p['note']}")
        lines.append("")
    lines.append("Apply one with --preset NAME (or preset = \"NAME\" in a config or sweep file); the file's settings "
                 "and flags override it. The run folder depends only on the settings a command ends with.")
    return "\n".join(lines)


def _fmt(settings: dict) -> str:
    def one(v):
        if isinstance(v, tuple):
            return ",".join(map(str, v))
        if isinstance(v, dict):
            return ",".join(f"{k}={x:g}" for k, x in v.items())
        if isinstance(v, bool):
            return str(v).lower()
        return f"{v:g}" if isinstance(v, float) else str(v)
    return " ".join(f"--{k.replace('_', '-')} {one(v)}" for k, v in settings.items())
