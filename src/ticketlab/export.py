"""`ticketlab export`: a trained ticket as a file a user can deploy, and `load_ticket` to read it back.

File format (`ticketlab-ticket`, version 1): one plain safetensors file (no pickle), readable by any
safetensors reader.

- Every pruned weight (a Linear or Conv weight whose mask drops enough entries that this is smaller than dense:
  below about two thirds kept; else it is stored dense, zeros included) is stored in compressed sparse row form over
  its 2-D view [out, in * kernel...] (a conv kernel [out, in, k, k] is flattened to [out, in*k*k]):
  `<name>.crow_indices` (int32, out + 1 row offsets), `<name>.col_indices` (int16 when the row has at most
  32767 columns, else int32; sorted within each row) and `<name>.values` (float32, the kept weights in
  row-major order). The kept positions are the mask's, so a kept weight that happens to be 0 stays kept.
- Every other tensor (biases, BatchNorm weights and running statistics, unpruned layers) under its own name,
  as it is.
- The metadata (`__metadata__`) holds `format` = "ticketlab-ticket", `version` = "1" and `ticketlab`, a JSON
  object: `model` (registry name and constructor arguments: input_shape, num_classes, widths, init; a
  channel-pruned network also its `channels` or VGG `plan`), `sparse` ({weight name: {"shape": [...]}}),
  `normalization` (what the run's data loader does to raw inputs, see `normalization`), `run` (folder name,
  experiment, hash, non-default settings), `seed`, `level` / `prune_ratio`, `arm`, `density` (kept fraction of the prunable
  weights), `parameters`, `test_accuracy` of the run and `ticketlab_version`.

`load_ticket(path, sparse=False)` rebuilds the network (weights dense, or `torch.sparse` CSR with a forward
that uses them when `sparse=True`) in eval mode, wrapped in a `Ticket`: `ticket(x)` takes inputs normalised
as the run's data set normalises them, `ticket.normalize(raw)` applies that normalisation to raw inputs
(`ticket.predict(raw)` does both), `ticket.info` is the metadata.

A channel-pruned network (an early-bird ticket of a network with BatchNorm) is stored dense: it is already a
smaller dense network (`instruments/channel_prune.py`). So is the kels fit hypothesis of a forget run's ke
generation (`--method ke --generation G`, `kels_network`): the first ceil(r out) units of every layer (all
outputs of the output layer) over the kept inputs, the dropped units removed; `model` records its narrower
`widths` (MLPs; LeNet-300-100 becomes an `mlp`), `channels` (the MNIST-1D CNNs), `filters` and `hidden`
(conv2/4/6) or `plan` (VGG), and the metadata `method`, `generation`, `split_rate`, `full_model`,
`fit_test_accuracy` (the slim network's; `test_accuracy` is the full network's). It computes the fit hypothesis
alone: the full network's output with its non-kept weights and biases zeroed (checked on the test set), not
the full network's output, to which the dropped units contribute. `--format onnx` writes the dense (or channel-pruned)
network as ONNX (the same metadata under the model's `ticketlab` metadata property) and checks it with
onnxruntime against PyTorch on the run's test set.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import __version__, models
from .errors import UserError
from .io import CorruptFile, atomic_write_bytes

FORMAT = "ticketlab-ticket"
VERSION = 1
ONNX_TOLERANCE = 1e-5
INSTALL = "pip install 'ticketlab[export]'"
EXPERIMENTS = ("lottery", "earlybird", "forget")
RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18")


# ------------------------------------------------------------------------------------------ normalisation
def normalization(data: dict) -> dict:
    """What the data loader of the run's data set (its spec's `data` group) does to raw inputs, as
    `(x / divide - mean[c]) / std[c]` with c the channel (dim 1; one value for every entry when there is one
    mean). `raw` says what the raw inputs are."""
    name = data.get("dataset")
    formula = "(x / divide - mean[c]) / std[c], c = the channel (dim 1 of [B, C, H, W]; one value: every entry)"
    if name == "mnist1d":
        out = {"raw": "MNIST-1D sequences as the mnist1d generator makes them ([B, 40] float), which it already "
                      "centres and scales: ticketlab applies nothing", "divide": 1.0, "mean": [0.0], "std": [1.0]}
    elif name in ("mnist", "fashion_mnist"):
        from .data.idx import SETS

        mean, std = SETS[name][1]
        out = {"raw": "uint8 pixels 0-255 of the IDX images, [B, 1, 28, 28]", "divide": 255.0, "mean": [mean], "std": [std]}
    elif name == "cifar10":
        from .data.cifar import MEAN, STD

        out = {"raw": "uint8 RGB pixels 0-255, [B, 3, 32, 32]", "divide": 255.0, "mean": list(MEAN), "std": list(STD)}
    elif name == "synthetic":
        from .data.synthetic import NOISE

        out = {"raw": f"class template + Gaussian noise (std {NOISE:g}) of the synthetic set, [B, 1, 16, 16], before "
                      "its scaling to unit variance", "divide": (1.0 + NOISE ** 2) ** 0.5, "mean": [0.0], "std": [1.0]}
    elif name == "folder":
        from .data import folder

        _, arrays = folder.load_arrays(Path(data.get("data_dir", "data")), int(data.get("image_size", 224)))
        std = [s if s > 0 else 1.0 for s in arrays["std"].tolist()]   # as the loader: a constant channel is not scaled
        size = int(data.get("image_size", 224))
        out = {"raw": f"uint8 RGB pixels 0-255 of the decoded images, resized (shorter side) and centre-cropped to "
                      f"{size}x{size}, [B, 3, {size}, {size}]", "divide": 255.0,
               "mean": arrays["mean"].tolist(), "std": std}
    else:
        raise UserError(f"export: no normalisation known for data set {name!r}")
    return {"dataset": name, **out, "formula": formula}


def normalize(x, norm: dict) -> torch.Tensor:
    """Raw inputs -> the network's inputs, by the recorded normalisation (float32, as the loaders compute)."""
    x = torch.as_tensor(x).to(torch.float32)
    mean = torch.tensor(norm["mean"], dtype=torch.float32)
    std = torch.tensor(norm["std"], dtype=torch.float32)
    if len(mean) > 1:
        if x.dim() < 2 or x.shape[1] != len(mean):
            raise ValueError(f"normalize: inputs of shape {tuple(x.shape)} have no channel dim 1 of size {len(mean)}")
        view = (1, len(mean)) + (1,) * (x.dim() - 2)
        mean, std = mean.view(view), std.view(view)
    return x.div(float(norm["divide"])).sub(mean).div(std)


# ------------------------------------------------------------------------------------------ sparse layers
class SparseLinear(nn.Module):
    """nn.Linear with a `torch.sparse` CSR weight [out, in]: y = (W @ x^T)^T + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)   # buffers: `.to(device)` moves them
        self.register_buffer("bias", bias, persistent=False)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = (self.weight @ x.reshape(-1, self.in_features).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.weight.values().numel()}"


class SparseConv(nn.Module):
    """nn.Conv1d / nn.Conv2d (groups 1, zero padding) with a `torch.sparse` CSR weight [out, in*k...]:
    the input is unfolded into columns [in*k..., B*L] and multiplied by the sparse weight."""

    def __init__(self, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NotImplementedError("sparse convolution needs groups=1, padding_mode='zeros' and numeric padding")
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        self.out_channels = conv.out_channels
        pad1 = lambda t, fill: (fill, t[0]) if self.dims == 1 else tuple(t)
        self.kernel_size, self.stride = pad1(conv.kernel_size, 1), pad1(conv.stride, 1)
        self.padding, self.dilation = pad1(conv.padding, 0), pad1(conv.dilation, 1)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1:
            x = x.unsqueeze(2)
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)]
        positions = cols.shape[2]
        y = self.weight @ cols.transpose(0, 1).reshape(cols.shape[1], b * positions)   # [out, B*L]
        y = y.view(self.out_channels, b, positions).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y.reshape(b, self.out_channels, size[1]) if self.dims == 1 else y.reshape(b, self.out_channels, *size)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, kernel_size={self.kernel_size[2 - self.dims:]}, nnz={self.weight.values().numel()}"


# ------------------------------------------------------------------------------------------------ Ticket
class Ticket(nn.Module):
    """An exported ticket, ready for inference (eval mode, no gradients).

    `ticket(x)`: logits of inputs normalised as the run's data set normalises them; `ticket.normalize(raw)`:
    raw inputs (`ticket.info["normalization"]["raw"]` says which) -> normalised inputs; `ticket.predict(raw)`:
    both. `ticket.model` is the network itself (the registry's class), `ticket.info` the file's metadata."""

    def __init__(self, model: nn.Module, info: dict):
        super().__init__()
        self.model = model
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def normalize(self, x) -> torch.Tensor:
        return normalize(x, self.info["normalization"])

    @torch.no_grad()
    def predict(self, raw) -> torch.Tensor:
        return self(self.normalize(raw))


# ------------------------------------------------------------------------------------------- the network
def build_network(model: dict, meta_device: bool = False) -> nn.Module:
    """The (uninitialised) network the metadata's `model` entry describes: the registry's model, or a
    channel-pruned copy of `mnist1d_cnn_bn` / a VGG with the recorded channels, or a narrower `mnist1d_cnn` /
    conv2/4/6 / ResNet (a kels fit hypothesis), or a ResNet with fewer channels inside its blocks (an
    early-bird ticket)."""
    name = model["name"]
    shape = tuple(int(d) for d in model["input_shape"])
    classes = int(model["num_classes"])
    widths = tuple(model["widths"]) if model.get("widths") is not None else None
    device = torch.device("meta") if meta_device else torch.device("cpu")
    if "channels" in model:
        from .models.conv_bn import MNIST1DCNNBN

        channels = tuple(int(c) for c in model["channels"])
        if name == "mnist1d_cnn":   # a kels fit hypothesis: one width for all three convolutions
            from .models.conv import MNIST1DCNN

            if len(channels) != 3 or len(set(channels)) != 1:
                raise ValueError(f"mnist1d_cnn takes one channel count for its three convolutions, got {list(channels)}")
            with device:
                return MNIST1DCNN(shape, classes, channels[0])
        if name != "mnist1d_cnn_bn":
            raise ValueError(f"channels are recorded for mnist1d_cnn and mnist1d_cnn_bn only, not {name!r}")
        with device:
            return MNIST1DCNNBN(math.prod(shape), classes, channels)
    if "filters" in model:   # a kels fit hypothesis of conv2/4/6: fewer filters and hidden units
        from .models.conv import CONV_PLANS, ConvNet

        filters = tuple(int(c) for c in model["filters"])
        if name not in CONV_PLANS or len(filters) != len(CONV_PLANS[name]):
            raise ValueError(f"filters {list(filters)} recorded for {name!r}, which is no conv2/4/6 of that depth")
        with device:
            return ConvNet(shape, filters, classes, hidden=tuple(int(h) for h in model.get("hidden") or (256, 256)))
    if "stages" in model or "inner" in model:   # a ResNet's kels fit hypothesis (narrower stages) or early-bird
        from .models.resnet import ImageNetResNet, ResNet   # ticket (fewer channels inside its blocks)

        stages = tuple(int(c) for c in model["stages"]) if model.get("stages") else None
        inner = tuple(int(c) for c in model["inner"]) if model.get("inner") else None
        with device:
            if name == "resnet18" and (stages is None or len(stages) == 4):
                return ImageNetResNet(shape, (2, 2, 2, 2), classes, name, stages=stages or (64, 128, 256, 512), inner=inner)
            if name in RESNETS and name != "resnet18" and (stages is None or len(stages) == 3):
                return ResNet(shape, int(name[6:]), classes, stages=stages, inner=inner)
        raise ValueError(f"stages {model.get('stages')} / inner widths recorded for {name!r}, which is no ResNet of that shape")
    if "plan" in model:
        from .models.vgg import PLANS, VGG

        depth = int(name.removeprefix("vgg").removesuffix("_bn"))
        if depth not in PLANS:
            raise ValueError(f"a VGG plan is recorded for a model that is no VGG: {name!r}")
        with device:
            return VGG(shape, depth, classes, plan=tuple(p if p == "M" else int(p) for p in model["plan"]))
    net = models.build(name, shape, classes, seed=0, init=model.get("init", "kaiming_normal"), widths=widths, meta=True)
    return net if meta_device else net.to_empty(device="cpu")


def _modules_by_weight(net: nn.Module) -> dict[str, tuple[nn.Module, str, nn.Module]]:
    """weight name -> (parent module, attribute, module) of every Linear / Conv layer."""
    out = {}
    for parent_name, parent in net.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                out[f"{parent_name}.{attr}.weight" if parent_name else f"{attr}.weight"] = (parent, attr, child)
    return out


# -------------------------------------------------------------------------------------------- the file
def _csr(weight: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSR parts of `weight`'s 2-D view [out, -1] at the kept positions."""
    w2, k2 = weight.reshape(weight.shape[0], -1), keep.reshape(weight.shape[0], -1).to(torch.bool)
    rows, cols = k2.nonzero(as_tuple=True)   # row-major: sorted by row, then column
    counts = k2.sum(dim=1, dtype=torch.int64)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    if int(crow[-1]) >= 2 ** 31:
        raise UserError(f"export: a layer of {int(crow[-1])} kept weights is too large for int32 indices")
    index = torch.int16 if w2.shape[1] <= 2 ** 15 - 1 else torch.int32
    return {"crow_indices": crow.to(torch.int32), "col_indices": cols.to(index),
            "values": w2[rows, cols].to(torch.float32).contiguous()}


def ticket_tensors(state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None,
                   csr_all: bool = False) -> tuple[dict, dict]:
    """(tensors to store, `sparse` metadata) of a network's weights `state` and its mask (None: all dense). A
    masked layer is stored in CSR where that is smaller than dense (below about two thirds of its weights
    kept), else dense (its pruned weights are zeros there); `csr_all`: CSR for every masked layer."""
    tensors, sparse = {}, {}
    for name, value in state.items():
        parts = _csr(value, mask[name]) if mask is not None and name in mask else None
        if parts is not None and (csr_all or sum(t.nbytes for t in parts.values()) < value.numel() * value.element_size()):
            for part, t in parts.items():
                tensors[f"{name}.{part}"] = t
            sparse[name] = {"shape": list(value.shape)}
        else:
            tensors[name] = value.detach().cpu().contiguous()
    return tensors, sparse


def write_ticket(path: str | Path, state: dict, mask: dict | None, info: dict, csr_all: bool = False) -> int:
    """Write the file; returns its size in bytes."""
    from safetensors.torch import save

    tensors, sparse = ticket_tensors(state, mask, csr_all)
    info = {**info, "sparse": sparse}
    data = save(tensors, metadata={"format": FORMAT, "version": str(VERSION), "ticketlab": json.dumps(info, sort_keys=True)})
    atomic_write_bytes(path, data)
    return len(data)


def read_ticket(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a ticket file; CorruptFile (one line) unless it is one."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .io import _metadata

    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; give an exported ticket file (.safetensors)") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give an exported ticket file (ticketlab export ...)") from None
    try:
        meta = _metadata(data) or {}
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise CorruptFile(f"{path} is not a valid safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise CorruptFile(f"{path} is not a ticket exported by `ticketlab export` (no format {FORMAT!r} in its metadata)")
    if meta.get("version") != str(VERSION):
        raise CorruptFile(f"{path}: ticket format version {meta.get('version')!r}; this ticketlab reads version {VERSION}")
    try:
        info = json.loads(meta["ticketlab"])
        if not isinstance(info, dict) or not isinstance(info.get("model"), dict) or not isinstance(info.get("sparse"), dict):
            raise ValueError("no model or sparse entry")
        normalization = info.get("normalization")
        if not (isinstance(normalization, dict) and isinstance(normalization.get("mean"), list)
                and isinstance(normalization.get("std"), list) and len(normalization["mean"]) == len(normalization["std"]) >= 1
                and all(isinstance(v, (int, float)) for v in normalization["mean"] + normalization["std"] + [normalization.get("divide")])):
            raise ValueError("malformed normalization")
    except (KeyError, ValueError, TypeError) as e:
        raise CorruptFile(f"{path}: malformed ticketlab metadata ({e})") from None
    return tensors, info


def _csr_tensor(path: Path, name: str, tensors: dict, shape: list) -> torch.Tensor:
    """The CSR weight `name` [out, prod(rest)], checked (bad indices would make sparse kernels read out of
    bounds): CorruptFile when its parts do not add up."""
    try:
        crow, col, values = (tensors[f"{name}.{p}"] for p in ("crow_indices", "col_indices", "values"))
    except KeyError as e:
        raise CorruptFile(f"{path}: sparse weight {name} lacks its {e.args[0]}") from None
    if not (isinstance(shape, list) and len(shape) >= 2 and all(isinstance(d, int) and d >= 1 for d in shape)):
        raise CorruptFile(f"{path}: sparse weight {name} has a malformed shape {shape!r}")
    rows, columns = shape[0], math.prod(shape[1:])
    ok = (crow.dtype in (torch.int32, torch.int64) and col.dtype in (torch.int16, torch.int32, torch.int64)
          and values.dtype == torch.float32 and crow.dim() == col.dim() == values.dim() == 1
          and crow.numel() == rows + 1 and col.numel() == values.numel())
    if ok:
        crow64, col64 = crow.to(torch.int64), col.to(torch.int64)
        ok = (int(crow64[0]) == 0 and int(crow64[-1]) == col.numel() and bool((crow64[1:] >= crow64[:-1]).all())
              and (col.numel() == 0 or (int(col64.min()) >= 0 and int(col64.max()) < columns)))
    if ok:
        try:
            index = torch.int32 if col.numel() < 2 ** 31 else torch.int64
            return torch.sparse_csr_tensor(crow.to(index), col.to(index), values, size=(rows, columns),
                                           check_invariants=True)
        except RuntimeError:   # columns not sorted or repeated within a row
            pass
    raise CorruptFile(f"{path}: sparse weight {name}: its CSR indices and values do not add up (corrupt file)")


def load_ticket(path: str | Path, sparse: bool = False) -> Ticket:
    """Read a file written by `ticketlab export --format safetensors`: the network in eval mode, with dense
    weights (`sparse=False`) or `torch.sparse` CSR weights for every pruned layer (`sparse=True`), wrapped in
    a `Ticket` (`.normalize(raw)`, `.predict(raw)`, `.info`, `.model`). CorruptFile (ticketlab.io) when the
    file is not an intact ticket."""
    path = Path(path)
    tensors, info = read_ticket(path)
    csr = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        for name, entry in info["sparse"].items():
            csr[name] = _csr_tensor(path, name, tensors, entry.get("shape") if isinstance(entry, dict) else None)
    try:
        net = build_network(info["model"], meta_device=True)
    except (UserError, ValueError, TypeError, KeyError) as e:
        raise CorruptFile(f"{path}: its model entry does not build a network ({e})") from None
    state = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.") and k[len(n) + 1:] in
                                                          ("crow_indices", "col_indices", "values") for n in csr)}
    for name, weight in csr.items():
        shape = info["sparse"][name]["shape"]
        state[name] = weight.to_dense().view(shape)
    expected = net.state_dict()
    wrong = [k for k in state if k in expected and state[k].dtype != expected[k].dtype]
    if wrong:
        raise CorruptFile(f"{path}: tensor {wrong[0]} is {state[wrong[0]].dtype}, the network's is {expected[wrong[0]].dtype}")
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CorruptFile(f"{path}: its tensors do not fit the network {info['model'].get('name')!r} "
                          f"({' '.join(str(e).split())[:300]})") from None
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):
        raise CorruptFile(f"{path}: the network has tensors the file does not hold")
    if sparse:
        layers = _modules_by_weight(net)
        for name, weight in csr.items():
            if name not in layers:
                raise CorruptFile(f"{path}: sparse weight {name} is no Linear or Conv layer's weight")
            parent, attr, module = layers[name]
            bias = module.bias.detach() if module.bias is not None else None
            if isinstance(module, nn.Linear):
                setattr(parent, attr, SparseLinear(weight, bias))
            else:
                setattr(parent, attr, SparseConv(module, weight, bias))
    net.eval().requires_grad_(False)
    return Ticket(net, info).eval()


# ---------------------------------------------------------------------------------------- from a run folder
def _units(parent: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in parent.glob(f"{prefix}*") if p.is_dir()) if parent.is_dir() else []


def locate(run_dir: Path, experiment: str, seed: int, level: int | None, arm: str, ratio: float | None,
           method: str | None = None, generation: int | None = None):
    """The unit of the requested ticket (UserError naming what exists when it does not)."""
    from .store import Unit

    if experiment != "forget" and (method is not None or generation is not None):
        raise UserError(f"--method and --generation select a forget run's fit hypothesis; {run_dir} is a {experiment} run")
    seeds = _units(run_dir, "seed-")
    seed_dir = run_dir / f"seed-{seed}"
    if not seed_dir.is_dir():
        raise UserError(f"{run_dir}: no seed {seed}; seeds there: {', '.join(s[5:] for s in seeds) or 'none'}")
    if experiment == "forget":
        if level is not None or arm != "ticket" or ratio is not None:
            raise UserError("a forget run's fit hypothesis is chosen by --method ke and --generation G, not --level, --arm or --ratio")
        method = method or "ke"
        if method != "ke":
            raise UserError(f"--method {method}: only ke (knowledge evolution, --split-mode kels) keeps whole units, "
                            f"so only its fit hypothesis is a slim network; valid: ke")
        gens = [int(s[4:]) for s in _units(seed_dir / "ke", "gen-")]
        listed = ", ".join(str(g) for g in [0, *gens]) if gens else "none (no ke generation was trained)"
        if generation is None or (generation != 0 and generation not in gens) or not gens:
            given = "give --generation G" if generation is None else f"seed {seed} has no ke generation {generation}"
            raise UserError(f"{run_dir}: {given}; ke generations there: {listed}")
        unit_dir = seed_dir / "gen-00" if generation == 0 else seed_dir / "ke" / f"gen-{generation:02d}"
        what = f"seed {seed} ke generation {generation}"
    elif experiment == "lottery":
        if ratio is not None:
            raise UserError("--ratio selects an early-bird ticket; a lottery run takes --level (and --arm)")
        if level is None:
            raise UserError(f"{run_dir} is a lottery run: give --level L (levels there: "
                            f"{', '.join(str(int(s[6:])) for s in _units(seed_dir, 'level-')) or 'none'})")
        level_dir = seed_dir / f"level-{level:02d}"
        if not level_dir.is_dir():
            raise UserError(f"{run_dir}: seed {seed} has no level {level}; levels there: "
                            f"{', '.join(str(int(s[6:])) for s in _units(seed_dir, 'level-')) or 'none'}")
        arms = sorted(p.name for p in level_dir.iterdir() if p.is_dir())
        unit_dir = level_dir / arm
        if arm not in arms:
            raise UserError(f"{run_dir}: seed {seed} level {level} has no arm {arm!r}; arms there: {', '.join(arms) or 'none'}")
        what = f"seed {seed} level {level} {arm}"
    else:
        if level is not None or arm != "ticket":
            raise UserError("an early-bird run's tickets are chosen by --ratio P (its --prune-ratios), not --level or --arm")
        ratios = [s[2:] for s in _units(seed_dir, "p-")]
        if ratio is None:
            raise UserError(f"{run_dir} is an early-bird run: give --ratio P (ratios there: {', '.join(ratios) or 'none'})")
        unit_dir = seed_dir / f"p-{ratio:g}"
        if not unit_dir.is_dir():
            raise UserError(f"{run_dir}: seed {seed} has no ticket of prune ratio {ratio:g}; ratios there: {', '.join(ratios) or 'none'}")
        what = f"seed {seed} prune ratio {ratio:g}"
    unit = Unit(unit_dir)
    manifest = unit.manifest()
    if not (manifest and manifest.get("complete")):   # finished but changed since: its reads raise CorruptFile
        raise UserError(f"{unit_dir}: the {what} unit is not finished; run the run's command again to finish it, then export")
    return unit, what


def _reference(experiment: str, model_spec: dict, unit, input_shape, num_classes) -> tuple[nn.Module, dict, dict | None, dict]:
    """(the network as the run evaluates it: masked or channel-pruned, its metadata `model` entry, its mask
    (None: dense), extra metadata)."""
    final = unit.read("final.safetensors")
    entry = {"name": model_spec["model"], "input_shape": list(input_shape), "num_classes": num_classes,
             "widths": list(model_spec["widths"]) if model_spec.get("widths") else None,
             "init": model_spec.get("init", "kaiming_normal")}
    result = unit.read("result.json")
    extra = {"test_accuracy": result.get("test_accuracy")}
    dense = build_network(entry)
    prunable = models.prunable_names(dense)
    if experiment == "lottery":
        mask = {k: v.to(torch.bool) for k, v in unit.read("mask.safetensors").items()}
    elif "channels_kept" in result:   # an early-bird ticket pruned for real: a smaller dense network
        if entry["name"] == "mnist1d_cnn_bn":
            entry["channels"] = [int(final[f"conv{i}.weight"].shape[0]) for i in (1, 2, 3)]
        elif entry["name"] in RESNETS:   # the channels between each block's two convolutions
            from .sparse.structure import bn_layers

            entry["inner"] = [int(final[f"{n}.weight"].shape[0]) for n in bn_layers(dense)]
        else:
            from .models.vgg import ConvModule

            convs = iter(int(final[f"layers.{n}.conv.weight"].shape[0]) for n, m in dense.layers.named_children()
                         if isinstance(m, ConvModule))
            entry["plan"] = ["M" if isinstance(m, nn.MaxPool2d) else next(convs) for _, m in dense.layers.named_children()]
        dense_weights = sum(dict(dense.named_parameters())[n].numel() for n in prunable)
        small = build_network(entry)
        small.load_state_dict(final)
        kept = sum(dict(small.named_parameters())[n].numel() for n in models.prunable_names(small))
        extra.update(channel_pruned=True, channels_kept=result["channels_kept"],
                     channels_remaining=result.get("channels_remaining"), density=kept / dense_weights)
        return small.eval(), entry, None, extra
    else:   # an early-bird ticket of a network without BatchNorm: kept by re-masking, so its zeros are its mask
        mask = {n: final[n] != 0 for n in prunable}
    masked = {k: (v * mask[k].to(v.dtype) if k in mask else v) for k, v in final.items()}
    dense.load_state_dict(masked)
    total = sum(m.numel() for m in mask.values())
    extra["density"] = sum(int(m.sum()) for m in mask.values()) / total if total else 1.0
    return dense.eval(), entry, mask, extra


# ---------------------------------------------------------------- forget: knowledge evolution's kels fit hypothesis
KELS_MODELS = ("mlp", "mnist1d_mlp", "lenet_300_100", "mnist1d_cnn", "mnist1d_cnn_bn", "conv2", "conv4", "conv6",
               "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", *RESNETS)


def kels_network(entry: dict, state: dict[str, torch.Tensor], split_rate: float) -> tuple[nn.Module, dict, nn.Module, dict]:
    """The kels fit hypothesis (`sparse/forget.py`, split rate r) of the network `entry` (a metadata `model` entry)
    with weights `state`, as a slim dense network: (the slim network, its `model` entry, the full network with
    every weight and bias outside the fit hypothesis zeroed, the kels keep masks), both networks in eval mode.

    Every Linear / Conv layer keeps its first ceil(r out) units (the output layer all of them) and the first
    ceil(r in) inputs (the first layer all of them); the slim network is the leading corner of every tensor:
    the kept units, the kept units' BatchNorm entries and, in each layer, the inputs that the kept units of the
    layer before produce (a flattened feature map is channel-major, so those are a leading range too). A kept
    block is always inside that corner; where it is narrower (a flatten of H x W positions keeps
    ceil(r C H W) <= ceil(r C) H W features) the weights outside it are stored as zeros. The dropped units are
    gone, so the slim network computes the fit hypothesis alone: exactly the full network with its non-kept
    weights and biases zeroed (the dropped channels' BatchNorm then feeds only zeroed weights), not the full
    network itself."""
    from .sparse.forget import Forgetting, keep_masks

    name = entry["name"]
    if name not in KELS_MODELS:
        raise UserError(f"export: no slim network of a kels fit hypothesis of {name}; supported: {', '.join(KELS_MODELS)}")
    full = build_network(entry)
    full.load_state_dict(state)
    masks, _ = keep_masks(full, Forgetting("ke", split_rate=split_rate, split_mode="kels"), seed=0, generation=0)
    kept = {w.removesuffix(".weight"): int(m.reshape(m.shape[0], -1).any(1).sum()) for w, m in masks.items()
            if w.endswith(".weight")}
    slim_entry = dict(entry)
    if name in ("mlp", "mnist1d_mlp", "lenet_300_100"):
        slim_entry.update(name="mnist1d_mlp" if name == "mnist1d_mlp" else "mlp",   # lenet's widths are fixed: an mlp
                          widths=[kept[f"hidden.{i}"] for i in range(len(full.hidden))])
    elif name in ("mnist1d_cnn", "mnist1d_cnn_bn"):
        slim_entry["channels"] = [kept[f"conv{i}"] for i in (1, 2, 3)]
    elif name in ("conv2", "conv4", "conv6"):
        slim_entry.update(filters=[kept[f"convs.{i}"] for i in range(len(full.convs))],
                          hidden=[kept[f"hidden.{i}"] for i in range(len(full.hidden))])
    elif name in RESNETS:
        slim_entry["stages"] = _resnet_stages(full, kept)
    else:
        slim_entry["plan"] = ["M" if isinstance(m, nn.MaxPool2d) else kept[f"layers.{n}.conv"]
                              for n, m in full.layers.named_children()]
    zeroed = {k: (v * masks[k].to(v.dtype) if k in masks else v) for k, v in full.state_dict().items()}
    full.load_state_dict(zeroed)
    slim = build_network(slim_entry)
    slim_state = {}
    for k, t in slim.state_dict().items():
        corner = tuple(slice(0, d) for d in t.shape)
        if k in masks and int(masks[k][corner].sum()) != int(masks[k].sum()):   # cannot happen for the models above
            raise RuntimeError(f"export: the kels fit hypothesis of {k} is not inside the slim network's {list(t.shape)}")
        slim_state[k] = zeroed[k][corner].clone()
    slim.load_state_dict(slim_state)
    return slim.eval(), slim_entry, full.eval(), masks


def _resnet_stages(full: nn.Module, kept: dict[str, int]) -> list[int]:
    """A ResNet's kept filters per stage. Every convolution of a stage (and the stem, with the first stage)
    keeps the same leading ceil(r f) channels, so a residual sum adds kept channels to kept channels and the
    dropped ones (constants after BatchNorm) reach only zeroed weights: the slim network is the same ResNet
    with narrower stages."""
    from .models.resnet import Residual

    stem = next(n for n, m in full.named_children() if isinstance(m, nn.Conv2d))
    blocks = [(n, m) for n, m in full.named_modules() if isinstance(m, Residual)]
    widths = sorted({m.conv2.out_channels for _, m in blocks})   # a stage's filters: its index
    stages: dict[int, set[int]] = {0: {kept[stem]}}
    for name, block in blocks:
        stages.setdefault(widths.index(block.conv2.out_channels), set()).update(
            v for k, v in kept.items() if k.startswith(name + "."))
    if any(len(v) != 1 for v in stages.values()):   # cannot happen: every layer of a stage has its width
        raise RuntimeError(f"export: a kels fit hypothesis with unequal widths within a stage: {stages}")
    return [stages[s].pop() for s in sorted(stages)]


def _forget_reference(record: dict, unit, generation: int, input_shape, num_classes):
    """(slim network, its entry, extra metadata, the full network with its non-kept weights zeroed, the full
    network's entry) of a forget run's ke unit."""
    spec = record.get("spec", {})
    operation, model_spec = spec.get("operation", {}), spec["model"]
    if spec.get("forget", {}).get("task", "classify") != "classify":
        raise UserError(f"export: a forget run of --task {spec['forget']['task']} has no classifier to export")
    if operation.get("split_mode", "kels") != "kels":
        raise UserError(f"export: this forget run's ke uses --split-mode {operation.get('split_mode')}: a Bernoulli "
                        f"weight mask keeps no whole units, so it has no slim network; only kels does")
    rate = float(operation.get("split_rate", 0.8))
    entry = {"name": model_spec["model"], "input_shape": list(input_shape), "num_classes": num_classes,
             "widths": list(model_spec["widths"]) if model_spec.get("widths") else None,
             "init": model_spec.get("init", "kaiming_normal")}
    slim, slim_entry, zeroed, masks = kels_network(entry, unit.read("final.safetensors"), rate)
    if generation > 0:   # the masks the run applied (the same every generation) must be these
        stored = unit.read("keep.safetensors")
        if any(not torch.equal(stored[k].to(torch.bool), m) for k, m in masks.items() if k in stored):
            raise CorruptFile(f"{unit.path}: its keep masks are not the kels fit hypothesis of split rate {rate:g}")
    weights = [n for n in models.prunable_names(zeroed)]
    total = sum(masks[n].numel() for n in weights)
    extra = {"test_accuracy": unit.read("result.json").get("test_accuracy"),   # of the full network
             "method": "ke", "generation": generation, "split_mode": "kels", "split_rate": rate,
             "fit_hypothesis": True, "full_model": entry,
             "density": sum(int(masks[n].sum()) for n in weights) / total if total else 1.0}
    return slim, slim_entry, extra, zeroed, entry


def _outputs(net: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def onnx_bytes(net: nn.Module, example: torch.Tensor, info: dict) -> bytes:
    """The network as an ONNX model (dynamic batch size, input `input`, output `logits`), exported with
    torch.onnx's dynamo-based exporter (needs onnxscript); `info` goes into its `ticketlab` metadata."""
    import contextlib
    import io
    import logging

    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"--format onnx needs onnx and onnxscript ({e.name} is missing): {INSTALL}") from None
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export",
                                            "torch._export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, input_names=["input"],
                                            output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
                proto = program.model_proto
            except TypeError:   # a torch before 2.5 (no dynamo argument): the TorchScript-based exporter
                buffer = io.BytesIO()
                torch.onnx.export(net, (example,), buffer, input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
                proto = onnx.load_from_string(buffer.getvalue())
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ticketlab", json.dumps(info, sort_keys=True)
    proto.producer_name = "ticketlab"
    return proto.SerializeToString()


def onnx_check(data: bytes, net: nn.Module, x: torch.Tensor, batch: int = 1000) -> float:
    """Max |onnxruntime - PyTorch| over the inputs `x`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"--format onnx checks the file with onnxruntime, which is not installed: {INSTALL}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            got = torch.from_numpy(session.run(None, {"input": chunk.numpy()})[0])
            worst = max(worst, _max_difference(got, net(chunk)))
    return worst


def export(run_dir: str | Path, *, seed: int, level: int | None = None, arm: str = "ticket", ratio: float | None = None,
           fmt: str = "safetensors", out: str | Path | None = None, data_dir: str | None = None,
           check_samples: int = 0, method: str | None = None, generation: int | None = None) -> dict:
    """Export one ticket of a lottery or early-bird run folder, or the kels fit hypothesis of a forget run's ke
    generation as a slim network (`kels_network`); returns what the command prints (the file, its size, the
    dense size, the checks' max differences)."""
    from . import data as datasets
    from . import store

    if fmt not in ("safetensors", "onnx"):
        raise UserError(f"--format {fmt!r}; valid: safetensors, onnx")
    run_dir = Path(run_dir)
    record = store.open_existing(run_dir).read("spec.json")
    experiment = record.get("experiment") if isinstance(record, dict) else None
    if experiment not in EXPERIMENTS:
        hint = " (a stability run keeps its tickets in lottery run folders beside it: export from those)" \
            if experiment == "stability" else ""
        raise UserError(f"{run_dir} is a {experiment} run; export reads tickets of {' and '.join(EXPERIMENTS)} runs{hint}")
    if fmt == "onnx":   # before any work: a missing extra is one line
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise UserError(f"--format onnx needs onnx, onnxscript and onnxruntime ({e.name} is missing): {INSTALL}") from None
    unit, what = locate(run_dir, experiment, seed, level, arm, ratio, method, generation)
    spec = record.get("spec", {})
    data_spec = dict(spec.get("data", {}))
    if data_dir is not None:
        data_spec["data_dir"] = data_dir
    options = {k: data_spec[k] for k in ("data_seed", "mnist1d_seed", "image_size") if k in data_spec}
    ds = datasets.load(data_spec["dataset"], data_spec.get("data_dir", "data"), **options)
    zeroed = None
    if experiment == "forget":
        net, entry, extra, zeroed, full_entry = _forget_reference(record, unit, generation, ds.input_shape, ds.num_classes)
        mask, selection, tail = None, {}, f"ke-gen-{generation:02d}"
    else:
        net, entry, mask, extra = _reference(experiment, spec["model"], unit, ds.input_shape, ds.num_classes)
        full_entry = {k: v for k, v in entry.items() if k not in ("channels", "plan", "inner")}
        selection = {"arm": arm, **({"level": level} if experiment == "lottery" else {"prune_ratio": ratio})}
        tail = f"level-{level:02d}-{arm}" if experiment == "lottery" else f"p-{ratio:g}"
    info = {"model": entry, "normalization": normalization(data_spec),
            "run": {"folder": run_dir.resolve().name, "experiment": experiment, "hash": record.get("hash"),
                    "settings": record.get("non_default", {})},
            "seed": seed, **selection,
            "parameters": sum(p.numel() for p in net.parameters()) - sum(int((~m).sum()) for m in (mask or {}).values()),
            "ticketlab_version": __version__, **extra}
    name = f"{run_dir.resolve().name}-seed-{seed}-{tail}"
    out = Path(out) if out is not None else Path(f"{name}.{'onnx' if fmt == 'onnx' else 'safetensors'}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name (e.g. {out / (name + '.' + fmt)})")
    test_x = ds.test_x.to(torch.float32)
    if check_samples:
        test_x = test_x[:check_samples]
    reference = _outputs(net, test_x)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    unpruned = build_network(full_entry, meta_device=True)
    dense_bytes = sum(v.numel() * v.element_size() for v in unpruned.state_dict().values())   # of the unpruned network
    report = {"file": str(out), "what": what, "experiment": experiment, "model": entry["name"], "dataset": data_spec["dataset"],
              "density": info["density"], "dense_bytes": dense_bytes, "samples": len(test_x), "format": fmt}
    if zeroed is not None:   # the slim network is the full one with its non-kept weights zeroed, up to float rounding
        full = _outputs(zeroed, test_x)
        report["max_difference_fit"] = fit = _max_difference(reference, full)
        if not fit <= 1e-4 * max(1.0, float(full.abs().max()) if full.numel() else 1.0):
            raise RuntimeError(f"export of {what}: the slim network differs from the full network with its non-kept "
                               f"weights zeroed by {fit:.3g}; nothing was written")
        report["widths"] = {k: entry[k] for k in ("widths", "channels", "filters", "hidden", "plan", "stages", "inner")
                            if entry.get(k)}
        if not check_samples:   # the slim network's own accuracy (the run's test_accuracy is the full network's)
            info["fit_test_accuracy"] = float((reference.argmax(1) == ds.test_y.to(reference.device)).float().mean()) \
                if len(test_x) else None
    if fmt == "safetensors":
        report["bytes"] = write_ticket(out, state, mask, info)
        report["max_difference"] = _max_difference(_outputs(load_ticket(out), test_x), reference)
        if mask is not None:
            report["max_difference_sparse"] = _max_difference(_outputs(load_ticket(out, sparse=True), test_x), reference)
        return report
    data = onnx_bytes(net, test_x[:2] if len(test_x) >= 2 else torch.zeros(2, *ds.input_shape), {**info, "sparse": {}})
    worst = onnx_check(data, net, test_x)
    report.update(bytes=len(data), max_difference=worst)
    if not worst <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export of {what}: onnxruntime's outputs differ from PyTorch's by {worst:.3g} "
                           f"(> {ONNX_TOLERANCE:g}) on the test set; {out} was not written")
    atomic_write_bytes(out, data)
    return report
