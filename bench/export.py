"""File size and inference latency of exported tickets (`ticketlab export`, `ticketlab.load_ticket`), at 100 / 20 / 5 /
1.4% of the weights remaining, one thread, batch 1 and 256, measured in one run so the ratios compare like with like:

- LeNet-300-100 (784-300-100-10), unstructured magnitude masks (every layer at the same density):
  dense      the unpruned network (the baseline of every ratio), a plain safetensors file of its state dict;
  masked     the ticket with dense weights (zeros where pruned): `load_ticket(FILE)`; its plain dense file is
             as large as the dense network's;
  csr        the same ticket with `torch.sparse` CSR weights: `load_ticket(FILE, sparse=True)`; file = the
             exported ticket (kept weights + CSR indices; at 100% every layer in CSR too, which `ticketlab export`
             would store dense).
- VGG-11 with BatchNorm on 3x32x32 inputs (the early-bird family), channel-pruned: every conv layer keeps the same
  fraction of its channels (those of largest |BatchNorm scale|), chosen so that the prunable weights remaining
  are the figure; the smaller dense network of `instruments/channel_prune.py`, exported as a dense file.

Latency: the mean time per forward pass (eval mode, no_grad) of a group of calls lasting ~0.02 s, best of 15 rounds
(VGG at batch 256: single passes, best of 3); the dense network is timed again beside every row and the rounds go
through the variants in turn, so a disturbance of a shared machine hits them alike.

    .venv/bin/python bench/export.py [--repeats 15] [--skip-conv]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import OtherLoad, machine

from ticketlab import models
from ticketlab.export import load_ticket, normalization, write_ticket
from ticketlab.instruments import channel_prune
from ticketlab.sparse.structure import bn_layers

DENSITIES = (1.0, 0.2, 0.05, 0.014)
NORM = normalization({"dataset": "mnist"})


def latencies(nets: dict, x: torch.Tensor, rounds: int, budget: float = 0.02) -> dict:
    """Seconds per forward pass of each network: rounds go through the networks in turn (so a disturbance of
    the shared machine hits them alike), each timing a group of calls lasting about `budget` s; best round."""
    calls = {}
    with torch.no_grad():
        for name, net in nets.items():
            net(x)
            start = time.perf_counter()
            net(x)
            calls[name] = max(1, int(budget / max(time.perf_counter() - start, 1e-6)))
        best = {name: float("inf") for name in nets}
        for _ in range(rounds):
            for name, net in nets.items():
                start = time.perf_counter()
                for _ in range(calls[name]):
                    net(x)
                best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def magnitude_mask(state: dict, names: list[str], density: float) -> dict:
    mask = {}
    for n in names:
        w = state[n].abs().reshape(-1)
        keep = max(1, round(density * w.numel()))
        m = torch.zeros(w.numel(), dtype=torch.bool)
        m[torch.topk(w, keep).indices] = True
        mask[n] = m.view_as(state[n])
    return mask


def plain_bytes(state: dict, folder: Path) -> int:
    from safetensors.torch import save_file

    path = folder / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path.stat().st_size


def lenet(repeats: int, folder: Path) -> list[dict]:
    net = models.build("lenet_300_100", (1, 28, 28), 10, seed=0).eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    names = models.prunable_names(net)
    info = {"model": {"name": "lenet_300_100", "input_shape": [1, 28, 28], "num_classes": 10, "widths": None,
                      "init": "kaiming_normal"}, "normalization": NORM}
    x1, x256 = torch.randn(1, 1, 28, 28), torch.randn(256, 1, 28, 28)
    dense_bytes = plain_bytes(state, folder)
    rows = []
    for d in DENSITIES:
        mask = magnitude_mask(state, names, d) if d < 1 else {n: torch.ones_like(state[n], dtype=torch.bool) for n in names}
        path = folder / f"lenet-{d}.safetensors"
        size = write_ticket(path, {k: v * mask[k] if k in mask else v for k, v in state.items()}, mask, info, csr_all=True)
        masked, csr = load_ticket(path).model, load_ticket(path, sparse=True).model
        row = {"model": "lenet_300_100", "weights_remaining": d, "dense_kB": dense_bytes / 1e3, "export_kB": size / 1e3}
        for b, x in ((1, x1), (256, x256)):   # dense timed again beside each row: the machine may be shared
            times = latencies({"dense": net, "masked": masked, "csr": csr}, x, repeats)
            row.update({f"{k}_b{b}_ms": 1e3 * t for k, t in times.items()})
        rows.append(row)
    return rows


def channel_keep(net, fraction: float) -> dict:
    """Per BatchNorm layer: the `fraction` of its channels with the largest |scale| (at least one)."""
    modules = dict(net.named_modules())
    keep = {}
    for name in bn_layers(net):
        gamma = modules[name].weight.detach().abs()
        k = max(1, round(fraction * gamma.numel()))
        m = torch.zeros(gamma.numel(), dtype=torch.bool)
        m[torch.topk(gamma, k).indices] = True
        keep[name] = m
    return keep


def prunable_count(net) -> int:
    params = dict(net.named_parameters())
    return sum(params[n].numel() for n in models.prunable_names(net))


def vgg(repeats: int, folder: Path) -> list[dict]:
    net = models.build("vgg11_bn", (3, 32, 32), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in bn_layers(net):
            bn = dict(net.named_modules())[name]
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g))
    net.eval()
    total = prunable_count(net)
    x1, x256 = torch.randn(1, 3, 32, 32), torch.randn(256, 3, 32, 32)
    dense_bytes = plain_bytes({k: v.detach() for k, v in net.state_dict().items()}, folder)
    rows = []
    for d in DENSITIES:
        lo, hi = 0.0, 1.0   # the channel fraction whose smaller network keeps d of the prunable weights
        for _ in range(20 if d < 1 else 0):
            mid = (lo + hi) / 2
            small = channel_prune.prune_channels(net, channel_keep(net, mid))
            lo, hi = (mid, hi) if prunable_count(small) < d * total else (lo, mid)
        fraction = hi
        small = channel_prune.prune_channels(net, channel_keep(net, fraction)).eval()
        path = folder / f"vgg-{d}.safetensors"
        plan = [m.conv.out_channels if hasattr(m, "conv") else "M" for m in small.layers]
        info = {"model": {"name": "vgg11_bn", "input_shape": [3, 32, 32], "num_classes": 10, "widths": None,
                          "init": "kaiming_normal", "plan": plan}, "normalization": normalization({"dataset": "cifar10"})}
        size = write_ticket(path, {k: v.detach() for k, v in small.state_dict().items()}, None, info)
        loaded = load_ticket(path).model
        row = {"model": "vgg11_bn", "weights_remaining": prunable_count(small) / total, "channels_remaining": fraction,
               "dense_kB": dense_bytes / 1e3, "export_kB": size / 1e3}
        for b, x in ((1, x1), (256, x256)):
            rounds, budget = (repeats, 0.02) if b == 1 else (3, 0.0)
            times = latencies({"dense": net, "pruned": loaded}, x, rounds, budget)
            row.update({f"{k}_b{b}_ms": 1e3 * t for k, t in times.items()})
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds per measurement (default 15)")
    parser.add_argument("--skip-conv", action="store_true", help="LeNet only (the VGG-11 part takes about a minute)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"export benchmark: {machine()}, 1 thread")
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        rows = lenet(args.repeats, Path(tmp))
        print("\nLeNet-300-100, unstructured: file kB (plain dense / exported CSR), latency ms and x of dense")
        print(f"{'remaining':>9} {'dense kB':>9} {'export kB':>9} {'size x':>7} | {'b1 dense':>8} {'masked':>14} {'csr':>14} | "
              f"{'b256 dense':>10} {'masked':>14} {'csr':>14}")
        for r in rows:
            cells = []
            for b in (1, 256):
                dense = r[f"dense_b{b}_ms"]
                cells.append(f"{dense:{8 if b == 1 else 10}.3f} " + " ".join(
                    f"{r[f'{k}_b{b}_ms']:7.3f} {r[f'{k}_b{b}_ms'] / dense:5.2f}x" for k in ("masked", "csr")))
            print(f"{100 * r['weights_remaining']:8.1f}% {r['dense_kB']:9.1f} {r['export_kB']:9.1f} "
                  f"{r['export_kB'] / r['dense_kB']:6.3f}x | {cells[0]} | {cells[1]}")
        conv = [] if args.skip_conv else vgg(args.repeats, Path(tmp))
        if conv:
            print("\nVGG-11-BN 3x32x32, channel-pruned (smaller dense network): file kB, latency ms and x of dense")
            print(f"{'remaining':>9} {'channels':>8} {'export kB':>9} {'size x':>7} | {'b1 dense':>8} {'pruned':>14} | "
                  f"{'b256 dense':>10} {'pruned':>14}")
            for r in conv:
                print(f"{100 * r['weights_remaining']:8.1f}% {100 * r['channels_remaining']:7.1f}% {r['export_kB']:9.1f} "
                      f"{r['export_kB'] / r['dense_kB']:6.3f}x | {r['dense_b1_ms']:8.3f} {r['pruned_b1_ms']:7.3f} "
                      f"{r['pruned_b1_ms'] / r['dense_b1_ms']:5.2f}x | {r['dense_b256_ms']:10.1f} {r['pruned_b256_ms']:7.1f} "
                      f"{r['pruned_b256_ms'] / r['dense_b256_ms']:5.2f}x")
    print(f"\nother processes kept {load.cores:.2f} cores busy on average meanwhile")
    return {"lenet": rows, "vgg": conv, "other_load_cores": load.cores}


if __name__ == "__main__":
    main()
