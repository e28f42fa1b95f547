"""The figures of `ticketlab report`: PNGs in the papers' style (matplotlib, Agg backend), each able to
overlay several runs on shared axes (one colour per run, the legend naming what differs between them).

Every function takes plain numbers (read from run folders by `report.html`) and returns PNG bytes; none
imports torch. A run's series is `(label, ...)`; with one run the label is empty and colours go to the
curves of that run (arms, layers, levels) instead.
"""

from __future__ import annotations

import math
import statistics

from . import plots
from .plots import ARM_STYLE, plt

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _label(run: str, what: str) -> str:
    return f"{run}: {what}" if run else what


def _band(ax, x, mean, std, color, alpha=0.18):
    """The spread band (mean ± one standard deviation over seeds) where there is a spread."""
    if any(s for s in std):
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=alpha, lw=0)


def _sparsity_axis(ax, xs: list[float]) -> None:
    """% weights remaining on a log axis, decreasing to the right (Frankle & Carbin's figures)."""
    if not xs:
        return
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = []
    for t in sorted({round(x, 1) for x in xs if x > 0}, reverse=True):
        if not ticks or ticks[-1] / t > 1.08:   # labels of nearly equal values (runs of other rates) would overlap
            ticks.append(t)
    if len(ticks) > 12:
        ticks = ticks[:: max(len(ticks) // 10, 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
    ax.minorticks_off()


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="tab:red")


def _style(run_i: int, curve_i: int, curve: str, several: bool) -> tuple[str, str, str]:
    """(colour, line style, marker) of curve `curve_i` of run `run_i`: one run colours its curves (arms keep
    their colours of the papers); several runs get a colour each and vary line style and marker by curve."""
    if several:
        return f"C{run_i % 10}", LINESTYLES[curve_i % len(LINESTYLES)], MARKERS[curve_i % len(MARKERS)]
    color, marker, _ = ARM_STYLE.get(curve, (f"C{curve_i % 10}", MARKERS[curve_i % len(MARKERS)], curve))
    return color, "-", marker


def curve_name(curve: str) -> str:
    return ARM_STYLE[curve][2] if curve in ARM_STYLE else curve.replace("_", " ")


# ---------------------------------------------------------------------------------------- accuracy
def accuracy_vs_sparsity(runs: list[tuple[str, dict[str, list[tuple[float, float, float, int]]], float | None]],
                         title: str, ylabel: str = "test accuracy (%)", percent: bool = True) -> bytes:
    """Mean (line) and spread (band: ± one std over seeds) against % weights remaining (log x, decreasing),
    for every run and curve (arm, criterion), and each run's dense network as a horizontal line.
    `runs`: [(label, {curve: [(weights_remaining, mean, std, n), ...]}, dense mean or None)]."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    several = len(runs) > 1
    xs = []
    scale = 100 if percent else 1
    for i, (run, curves, dense) in enumerate(runs):
        for j, (curve, points) in enumerate(curves.items()):
            points = sorted((p for p in points if p[3] and p[0] is not None and not math.isnan(p[1])), key=lambda p: -p[0])
            if not points:
                continue
            color, ls, marker = _style(i, j, curve, several)
            x = [100 * p[0] for p in points]
            mean = [scale * p[1] for p in points]
            std = [scale * p[2] for p in points]
            xs += x
            ax.plot(x, mean, color=color, ls=ls, marker=marker, ms=4, lw=1.5, label=_label(run, curve_name(curve)))
            _band(ax, x, mean, std, color)
        if dense is not None and not math.isnan(dense):
            color = f"C{i % 10}" if several else "gray"
            ax.axhline(scale * dense, color=color, ls="--", lw=1, alpha=0.7,
                       label=_label(run, f"dense ({scale * dense:.1f}{'%' if percent else ''})"))
    if not xs:
        _empty(ax, "no finished points yet")
    _sparsity_axis(ax, xs)
    return plots._finish(fig, ax, "% weights remaining", ylabel, title, legend=7)


def early_stop(runs: list[tuple[str, dict[str, list[tuple[float, float, float, float, float]]]]], title: str) -> bytes:
    """Frankle & Carbin's "learns faster" figure: the early-stopping iteration (lowest test loss, left) and the
    accuracy there (right) against % weights remaining. `runs`: [(label, {arm: [(weights_remaining, step mean,
    step std, accuracy mean, accuracy std)]})]."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    several, xs = len(runs) > 1, []
    for i, (run, curves) in enumerate(runs):
        for j, (arm, points) in enumerate(curves.items()):
            points = sorted((p for p in points if p[0] is not None and not math.isnan(p[1])), key=lambda p: -p[0])
            if not points:
                continue
            color, ls, marker = _style(i, j, arm, several)
            x = [100 * p[0] for p in points]
            xs += x
            for ax, m, s, k in ((a1, 1, 2, 1), (a2, 3, 4, 100)):
                mean, std = [k * p[m] for p in points], [k * p[s] for p in points]
                ax.plot(x, mean, color=color, ls=ls, marker=marker, ms=4, label=_label(run, curve_name(arm)))
                _band(ax, x, mean, std, color)
    for ax, ylabel in ((a1, "early-stop iteration (lowest test loss)"), (a2, "test accuracy at early stop (%)")):
        if not xs:
            _empty(ax, "no finished points yet")
        _sparsity_axis(ax, xs)
        ax.set_xlabel("% weights remaining")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if a1.get_legend_handles_labels()[0]:
        a1.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


# ---------------------------------------------------------------------------------- training curves
def training_curves(panels: list[tuple[str, dict[str, list[tuple[int, float, float]]]]], title: str,
                    ylabel: str = "test accuracy (%)", xlabel: str = "iteration", scale: float = 100) -> bytes:
    """One panel per run (shared y axis): a curve per level (or cell), mean over seeds with a spread band,
    coloured from dense (dark) to sparse (light). `panels`: [(panel title, {curve: [(step, mean, std)]})]."""
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (name, curves) in zip(axes.flat, panels):
        k = max(len(curves) - 1, 1)
        for j, (curve, points) in enumerate(curves.items()):
            if not points:
                continue
            color = cmap(0.9 * j / k)
            x = [p[0] for p in points]
            mean, std = [scale * p[1] for p in points], [scale * p[2] for p in points]
            ax.plot(x, mean, color=color, lw=1.3, label=curve)
            _band(ax, x, mean, std, color, alpha=0.12)
        if not curves:
            _empty(ax, "no finished unit yet")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2 if len(curves) > 6 else 1)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


# -------------------------------------------------------------------------------------------- layers
def layer_sparsity(runs: list[tuple[str, dict[str, list[tuple[float, float]]]]], title: str) -> bytes:
    """% of each layer's weights kept against the network's % weights remaining, one curve per layer (colour)
    and run (line style). `runs`: [(label, {layer: [(weights_remaining, layer density)]})]."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    xs, colors = [], {}
    for i, (run, layers) in enumerate(runs):
        for layer, points in layers.items():
            points = sorted(points, key=lambda p: -p[0])
            color = colors.setdefault(layer, f"C{len(colors) % 10}")
            x = [100 * p[0] for p in points]
            xs += x
            ax.plot(x, [100 * p[1] for p in points], color=color, ls=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)], ms=3, label=_label(run, layer))
    if not xs:
        _empty(ax, "no sparsity.json in a finished unit yet")
    _sparsity_axis(ax, xs)
    if xs:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else ""))
    return plots._finish(fig, ax, "% weights remaining (network)", "% of the layer's weights kept", title, legend=7)


# ---------------------------------------------------------------------------------------- deconstruct
def grid(panels: list[tuple[str, list[str], list[str], list[list[float | None]]]], title: str) -> bytes:
    """Zhou et al.'s grids: one heat map per panel (run, level), rows = mask criteria, columns = mask-1 actions
    (or untrained weights), cells = mean test accuracy (%), annotated. `panels`: [(title, rows, cols, values)]."""
    import numpy as np

    n = max(len(panels), 1)
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    width = max(max((len(p[2]) for p in panels), default=1), 2)
    height = max(max((len(p[1]) for p in panels), default=1), 2)
    fig, axes = plt.subplots(nrows, cols, figsize=(1.3 * width * cols + 2.5, 0.55 * height * nrows + 1.8), squeeze=False)
    finite = [v for p in panels for row in p[3] for v in row if v is not None and not math.isnan(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-6
    for ax, (name, rows, columns, values) in zip(axes.flat, panels):
        m = np.array([[math.nan if v is None else 100 * v for v in row] for row in values], dtype=float)
        ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=100 * lo, vmax=100 * hi, aspect="auto")
        for r in range(len(rows)):
            for c in range(len(columns)):
                v = m[r, c]
                ax.text(c, r, "-" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if not math.isnan(v) and v < 100 * (lo + hi) / 2 else "black")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title + " (test accuracy %, mean over seeds)", fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


# ------------------------------------------------------------------------------------------ supermask
def supermask(runs: list[tuple[str, dict[str, list[tuple[int, float, float]]], list[tuple[int, float, float]]]],
              title: str) -> bytes:
    """Learned supermasks over training: test accuracy (left; sampled mask solid, expected mask dashed) and %
    weights the mask keeps (right), mean over seeds with a spread band, one colour per run.
    `runs`: [(label, {"sampled mask" | "expected mask": [(step, mean, std)]}, [(step, kept mean, kept std)])]."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (run, curves, kept) in enumerate(runs):
        color = f"C{i % 10}"
        for j, (what, points) in enumerate(curves.items()):
            if points:
                x, mean, std = [p[0] for p in points], [100 * p[1] for p in points], [100 * p[2] for p in points]
                a1.plot(x, mean, color=color, ls=LINESTYLES[j], lw=1.4, label=_label(run, what))
                _band(a1, x, mean, std, color)
        if kept:
            x, mean, std = [p[0] for p in kept], [100 * p[1] for p in kept], [100 * p[2] for p in kept]
            a2.plot(x, mean, color=color, lw=1.4, label=run or "sampled mask")
            _band(a2, x, mean, std, color)
    for ax, ylabel in ((a1, "test accuracy (%)"), (a2, "% weights kept by the mask")):
        if not ax.get_lines():
            _empty(ax, "no finished seed yet")
        ax.set_xlabel("training step (scores)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


# ------------------------------------------------------------------------------------------------ LCA
def lca_layers(runs: list[tuple[str, list[int], dict[str, list[float]]]], title: str) -> bytes:
    """LCA of each layer per step (left) and summed over training (right; below zero: the layer helped
    lower the loss), Lan et al. 2019 Fig. 3 style. `runs`: [(label, steps, {layer: per-step LCA})]."""
    import numpy as np

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors: dict[str, str] = {}
    for i, (run, steps, layers) in enumerate(runs):
        for layer, values in layers.items():
            color = colors.setdefault(layer, f"C{len(colors) % 10}")
            ls = LINESTYLES[i % len(LINESTYLES)]
            a1.plot(steps, values, color=color, ls=ls, lw=1, label=_label(run, layer))
            a2.plot(steps, np.cumsum(values), color=color, ls=ls, lw=1.3, label=_label(run, layer))
    for ax, ylabel in ((a1, "LCA per step (loss change)"), (a2, "cumulative LCA (loss change)")):
        ax.axhline(0, color="gray", lw=0.8)
        if not ax.get_lines()[1:]:
            _empty(ax, "no finished seed yet")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if a2.get_legend_handles_labels()[0]:
        a2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


def lca_totals(runs: list[tuple[str, dict[str, tuple[float, float]]]], title: str) -> bytes:
    """Total LCA of each layer (mean over seeds, error bar: std), one bar group per layer, a bar per run."""
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    layers = list(dict.fromkeys(layer for _, totals in runs for layer in totals))
    width = 0.8 / max(len(runs), 1)
    for i, (run, totals) in enumerate(runs):
        xs = [layers.index(l) + (i - (len(runs) - 1) / 2) * width for l in totals]
        ax.bar(xs, [m for m, _ in totals.values()], width, yerr=[s for _, s in totals.values()], capsize=2,
               color=f"C{i % 10}", label=run or None)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
    if not layers:
        _empty(ax, "no finished seed yet")
    return plots._finish(fig, ax, "layer", "total LCA over training (< 0: helped)", title,
                         legend=7 if len(runs) > 1 else None)


def helped_share(runs: list[tuple[str, list[int], list[float], list[float]]], layer_shares: list[tuple[str, dict[str, float]]],
                 title: str, numbered: str = "run") -> bytes:
    """Left: % of parameters helping (LCA < 0) at each step, mean over seeds with a band (Lan et al.: just over
    half). Right, where the per-parameter totals were read: per layer, the shares of parameters whose total LCA
    helped / hurt. `runs`: [(label, steps, mean, std)]; `layer_shares`: [(label, {layer: share helped})]."""
    two = bool(layer_shares)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6.8, 4.2), squeeze=False)
    a1 = axes[0][0]
    for i, (run, steps, mean, std) in enumerate(runs):
        color = f"C{i % 10}"
        m, s = [100 * v for v in mean], [100 * v for v in std]
        a1.plot(steps, m, color=color, lw=1, label=run or "mean over seeds")
        _band(a1, steps, m, s, color)
    a1.axhline(50, color="gray", ls="--", lw=0.8)
    if not runs:
        _empty(a1, "no finished seed yet")
    a1.set_xlabel("iteration")
    a1.set_ylabel("% parameters helping (LCA < 0)")
    a1.grid(alpha=0.3)
    if a1.get_legend_handles_labels()[0]:
        a1.legend(fontsize=7)
    if two:
        a2 = axes[0][1]
        layers = list(dict.fromkeys(l for _, shares in layer_shares for l in shares))
        width = 0.8 / len(layer_shares)
        for i, (run, shares) in enumerate(layer_shares):
            xs = [layers.index(l) + (i - (len(layer_shares) - 1) / 2) * width for l in shares]
            helped = [100 * v for v in shares.values()]
            a2.bar(xs, helped, width, color="tab:blue", alpha=1 - 0.25 * (i % 3), label="helped" if i == 0 else None)
            a2.bar(xs, [100 - h for h in helped], width, bottom=helped, color="tab:red", alpha=1 - 0.25 * (i % 3),
                   label="hurt" if i == 0 else None)
            if run:
                for x in xs:
                    a2.text(x, 101, str(i + 1), ha="center", va="bottom", fontsize=6)
        a2.set_xticks(range(len(layers)))
        a2.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
        a2.set_ylabel("% of the layer's parameters (total LCA)")
        a2.set_ylim(0, 108)
        a2.legend(fontsize=7, loc="lower right")
        a2.set_title(f"bars numbered by {numbered}" if len(layer_shares) > 1 else "", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


# ------------------------------------------------------------------------------------------ stability
def barrier(runs: list[tuple[str, dict[str, list[tuple[int, float, float]]]]], title: str) -> bytes:
    """Error barrier against the step k the two copies split at (Frankle et al. 2020), mean over seeds with a
    spread band, one curve per level (dense, ticket levels) and run. `runs`: [(label, {curve: [(k, mean, std)]})]."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    several = len(runs) > 1
    ks = []
    for i, (run, curves) in enumerate(runs):
        for j, (curve, points) in enumerate(curves.items()):
            points = sorted(p for p in points if not math.isnan(p[1]))
            if not points:
                continue
            color, ls, marker = _style(i, j, curve, several)
            x = [p[0] for p in points]
            ks += x
            mean, std = [100 * p[1] for p in points], [100 * p[2] for p in points]
            ax.plot(x, mean, color=color, ls=ls, marker=marker, ms=4, label=_label(run, curve))
            _band(ax, x, mean, std, color)
    ax.axhline(2, color="gray", ls="--", lw=0.8, label="2% (stable)")
    if not ks:
        _empty(ax, "no finished path yet")
    elif min(ks) >= 0 and max(ks) > 10 * max(min(k for k in ks if k > 0) if any(ks) else 1, 1):
        ax.set_xscale("symlog", linthresh=max(min((k for k in ks if k > 0), default=1), 1))
    return plots._finish(fig, ax, "iteration k the copies split at (rewind step)", "error barrier (%)", title, legend=7)


def interpolation(runs: list[tuple[str, dict[str, tuple[list[float], list[float]]]]], title: str) -> bytes:
    """Test error along the straight path between the two copies, a curve per (level, k) and run."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    several = len(runs) > 1
    for i, (run, curves) in enumerate(runs):
        for j, (curve, (alphas, errors)) in enumerate(curves.items()):
            color = f"C{i % 10}" if several else f"C{j % 10}"
            ax.plot(alphas, [100 * e for e in errors], color=color, ls=LINESTYLES[j % 4] if several else "-",
                    marker=".", ms=3, lw=1, label=_label(run, curve))
    if not ax.get_lines():
        _empty(ax, "no finished path yet")
    return plots._finish(fig, ax, "interpolation alpha", "test error (%)", title, legend=7)


# ------------------------------------------------------------------------------------------ early bird
def earlybird(runs: list[tuple[str, list[tuple[float, float, float, float, float, float]]]], title: str) -> bytes:
    """Early-bird tickets per pruning ratio: retrained test accuracy (left), the epoch the early bird was found
    (middle) and the training FLOPs against full training + pruning (right), mean over seeds (error bars: std).
    `runs`: [(label, [(ratio, acc mean, acc std, epoch mean, epoch std, flops ratio mean)])]."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (run, points) in enumerate(runs):
        points = sorted(points)
        x = [100 * p[0] for p in points]
        kw = dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)], ms=4, capsize=2, label=run or None)
        axes[0].errorbar(x, [100 * p[1] for p in points], yerr=[100 * p[2] for p in points], **kw)
        axes[1].errorbar(x, [p[3] for p in points], yerr=[p[4] for p in points], **kw)
        axes[2].errorbar(x, [p[5] for p in points], **kw)
    for ax, ylabel in zip(axes, ("retrained test accuracy (%)", "early-bird epoch", "training FLOPs / full")):
        if not ax.get_lines():
            _empty(ax, "no finished ticket yet")
        ax.set_xlabel("pruning ratio p (%)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


# -------------------------------------------------------------------------------------- generic curves
def curves(runs: list[tuple[str, dict[str, list[tuple[float, float, float]]]]], title: str, xlabel: str, ylabel: str,
           scale: float = 100, hlines: list[tuple[str, float]] = (), categories: list[str] | None = None) -> bytes:
    """Mean with a spread band against any x, a curve per (run, curve): forget-and-relearn generations,
    referential-game iterations, sweep axes. `categories`: x values that are not numbers, drawn at 0, 1, ...
    `runs`: [(label, {curve: [(x, mean, std)]})]; `hlines`: [(label, value)] drawn dashed."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    several = len(runs) > 1
    for i, (run, series) in enumerate(runs):
        for j, (curve, points) in enumerate(series.items()):
            points = [p for p in points if not math.isnan(p[1])]
            if not points:
                continue
            color, ls, marker = _style(i, j, curve, several)
            x = [p[0] for p in points]
            mean, std = [scale * p[1] for p in points], [scale * p[2] for p in points]
            ax.plot(x, mean, color=color, ls=ls, marker=marker, ms=3, lw=1.4, label=_label(run, curve_name(curve)))
            _band(ax, x, mean, std, color)
    for k, (label, value) in enumerate(hlines):
        ax.axhline(scale * value, color=f"C{k % 10}" if several else "gray", ls="--", lw=1, alpha=0.7, label=label)
    xs = [p[0] for _, series in runs for points in series.values() for p in points]
    if xs and all(isinstance(x, int) for x in xs):   # generations, iterations: no ticks between integers
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if categories:
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(categories, rotation=30, ha="right")
    if not ax.get_lines():
        _empty(ax, "no finished point yet")
    return plots._finish(fig, ax, xlabel, ylabel, title, legend=7)


# ------------------------------------------------------------------------------------- pruning at init
AT_INIT_ARMS = {"pruned": ("-", "o"), "reshuffle": ((0, (5, 2)), "v"), "reinit": ((0, (2, 1.5)), "s")}
TICKET_SHADES = ("dimgray", "darkgray", "lightslategray", "silver")   # --compare's IMP curve is the black one


def at_init(runs: list[tuple[str, dict[tuple[str, str], list[tuple[float, float, float, int]]], float | None]],
            tickets: list[tuple[str, list[tuple[float, float, float, int]]]], title: str) -> bytes:
    """Pruning at initialisation (Frankle et al. 2021, Fig. 1 style): test accuracy vs % weights remaining (log x,
    decreasing), a colour per method (and run), the pruned network solid, its controls dashed in the method's
    colour (reshuffle long dashes, reinit short), mean over seeds with a band of one std; the IMP tickets of the
    run's `--compare` (method `imp`) dashed black, each run's dense network a horizontal line, and the tickets of
    lottery runs (`tickets`) solid in greys. `runs`: [(label, {(method, arm): [(weights_remaining, mean, std, n)]},
    dense mean or None)]; `tickets`: [(label, [(weights_remaining, mean, std, n)])]."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    several = len(runs) > 1
    xs: list[float] = []
    colours: dict = {}

    def draw(points, color, ls, marker, label, lw=1.5, band=0.18):
        points = sorted((p for p in points if p[3] and p[0] is not None and not math.isnan(p[1])), key=lambda p: -p[0])
        if not points:
            return
        x, mean, std = [100 * p[0] for p in points], [100 * p[1] for p in points], [100 * p[2] for p in points]
        xs.extend(x)
        ax.plot(x, mean, color=color, ls=ls, marker=marker, ms=4, lw=lw, label=label)
        _band(ax, x, mean, std, color, alpha=band)

    for i, (run, curves, dense) in enumerate(runs):
        for (method, arm), points in curves.items():
            if method == "imp":
                draw(points, "black", "--", ".", _label(run, "IMP tickets (--compare)"), lw=1.4, band=0.1)
                continue
            color = colours.setdefault((i, method), f"C{len(colours) % 10}")
            ls, marker = AT_INIT_ARMS.get(arm, ("-.", "x"))
            name = method + ("" if arm == "pruned" else f" ({arm})")
            draw(points, color, ls, marker, _label(run, name), lw=1.6 if arm == "pruned" else 1.1,
                 band=0.18 if arm == "pruned" else 0.08)
        if dense is not None and not math.isnan(dense):
            ax.axhline(100 * dense, color=f"C{i % 10}" if several else "gray", ls="--", lw=1, alpha=0.7,
                       label=_label(run, f"dense ({100 * dense:.1f}%)"))
    for k, (run, points) in enumerate(tickets):
        draw(points, TICKET_SHADES[k % len(TICKET_SHADES)], "-", "*", _label(run, "IMP ticket (lottery)"), lw=1.3, band=0.1)
    if not xs:
        _empty(ax, "no finished points yet")
    _sparsity_axis(ax, xs)
    return plots._finish(fig, ax, "% weights remaining", "test accuracy (%)", title, legend=6)


# ------------------------------------------------------------------------------------------ LR range
def lr_range(runs: list[tuple[str, dict[int, list[tuple[float, float | None, float | None]]], dict]], title: str) -> bytes:
    """The LR range test (Smith 2017): training loss vs learning rate (log x), smoothed (line) and raw (faint)
    per seed, and vertical lines at the suggested min_lr (steepest descent, dashed) and max_lr (lowest smoothed
    loss, dotted). One run: a colour per seed, the lines green and red; several: a colour per run, a line style
    per seed. `runs`: [(label, {seed: [(lr, loss, smoothed loss)]}, {"min_lr": ..., "max_lr": ...})]."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    several = len(runs) > 1
    smoothed: list[float] = []
    for i, (run, seeds, marks) in enumerate(runs):
        for j, (seed, points) in enumerate(seeds.items()):
            color = f"C{i % 10}" if several else f"C{j % 10}"
            ls = LINESTYLES[j % len(LINESTYLES)] if several else "-"
            raw = [(lr, loss) for lr, loss, _ in points if loss is not None and math.isfinite(loss) and lr > 0]
            kept = [(lr, s) for lr, _, s in points if s is not None and math.isfinite(s) and lr > 0]
            if raw:
                ax.plot([p[0] for p in raw], [p[1] for p in raw], color=color, ls=ls, alpha=0.2, lw=0.7)
            if kept:
                ax.plot([p[0] for p in kept], [p[1] for p in kept], color=color, ls=ls, lw=1.5,
                        label=_label(run, f"seed {seed} (smoothed)"))
                smoothed += [p[1] for p in kept]
        for key, ls, single in (("min_lr", "--", "tab:green"), ("max_lr", ":", "tab:red")):
            v = marks.get(key)
            if isinstance(v, (int, float)) and v > 0 and math.isfinite(v):
                ax.axvline(v, color=f"C{i % 10}" if several else single, ls=ls, lw=1.2,
                           label=_label(run, f"{key} {v:.2g}"))
    if not smoothed:
        _empty(ax, "no finished seed yet")
    else:   # the exploding tail (raw losses) would flatten everything else
        ax.set_xscale("log")
        ax.set_ylim(min(smoothed) * 0.9, max(smoothed) * 1.3)
    return plots._finish(fig, ax, "learning rate", "training loss", title, legend=7)
