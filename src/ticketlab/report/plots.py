"""PNG plots in the papers' style (matplotlib, Agg backend), returned as bytes for the store to write.

Units that diverged have no point: the summaries leave them out and count them (`diverged`), and the
legend says how many each curve lost ("(2 diverged, not shown)"); a plot with no point left says so.
"""

from __future__ import annotations

import io
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARM_STYLE = {"ticket": ("tab:blue", "o", "winning ticket"), "random_reinit": ("tab:orange", "s", "random reinit"),
             "random_prune": ("tab:green", "^", "random pruning"), "reshuffle": ("tab:purple", "v", "reshuffle"),
             # sparse-train's methods (pruning during training)
             "gmp": ("tab:red", "D", "GMP (Zhu & Gupta)"), "set": ("tab:olive", "P", "SET"), "rigl": ("tab:cyan", "X", "RigL")}


DPI = 120
HOVER_KEY = "ticketlab.hover"   # a PNG text chunk: the figure's data points in the image's pixels (`hover_points`)
MAX_HOVER = 500                 # points per figure with a hover value (more are thinned evenly: ~0.4 kB a point)


def _png(fig) -> bytes:
    """The figure as PNG (tight, padded 0.1 in), carrying its data points for hover values (`HOVER_KEY`)."""
    fig.set_dpi(DPI)
    fig.canvas.draw()
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
    points = hover_points(fig, bbox)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches=bbox,
                metadata={HOVER_KEY: json.dumps(points, separators=(",", ":"))} if points else None)
    plt.close(fig)
    return buf.getvalue()


def hover_points(fig, bbox) -> list[list]:
    """[x px, y px, text] of each point of every labelled data line (markers and lines in data coordinates;
    not bands, reference lines or heat maps), in the pixels of the image saved at `DPI` within `bbox`
    (inches): what the report shows when the pointer rests on a point. The text names the curve (and the
    panel, when there are several) and gives both values as the axes show them."""
    def value(v: float, ticks: dict) -> str:
        return ticks.get(round(v, 9)) or f"{v:.4g}"

    lines = [(ax, line) for ax in fig.axes for line in ax.get_lines()
             if line.get_visible() and not line.get_label().startswith("_") and line.get_transform() is ax.transData]
    total = sum(len(line.get_xdata()) for _, line in lines)
    step = max(1, math.ceil(total / MAX_HOVER))
    panels = sum(1 for ax in fig.axes if ax.get_lines())
    out = []
    for ax, line in lines:
        ticks = {round(float(t), 9): lab.get_text() for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())
                 if lab.get_text() and not _is_number(lab.get_text())}   # categories: their names
        name = line.get_label() + (f" ({ax.get_title()})" if panels > 1 and ax.get_title() else "")
        box = ax.get_window_extent()
        for x, y in line.get_xydata()[::step]:
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            px, py = ax.transData.transform((x, y))
            if not (box.x0 - 1 <= px <= box.x1 + 1 and box.y0 - 1 <= py <= box.y1 + 1):   # clipped away
                continue
            text = f"{name}\n{ax.get_xlabel() or 'x'}: {value(float(x), ticks)}\n{ax.get_ylabel() or 'y'}: {value(float(y), {})}"
            out.append([round((px / fig.dpi - bbox.x0) * DPI, 1), round((bbox.y1 - py / fig.dpi) * DPI, 1), text])
    return out


def _is_number(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-"))   # matplotlib's minus sign
        return True
    except ValueError:
        return False


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend: int | None = 8, title_size: float | None = None) -> bytes:
    """Labels, title, a light grid and the legend every line plot here shares; then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:   # none: every curve's units diverged
        ax.legend(fontsize=legend)
    return _png(fig)


def diverged_note(count: int) -> str:
    """What a legend entry adds for a curve that lost `count` units to divergence."""
    return f" ({count} diverged, not shown)" if count else ""


def _nothing_to_show(ax, what: str = "every unit diverged: nothing to plot") -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="tab:red")


def accuracy_vs_sparsity(summary: list[dict], title: str, dense: float | None = None) -> bytes:
    """Test accuracy vs % weights remaining (log x, decreasing to the right), one curve per arm, mean +- std
    over seeds, and the dense network's accuracy as a horizontal line (Frankle & Carbin, Fig. 3 style).
    Points whose units all diverged are left out, and the legend counts the diverged units of each arm."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms = list(dict.fromkeys(r["arm"] for r in summary))
    shown = [r for r in summary if r.get("n", 1) and r["weights_remaining"] is not None]
    for arm in arms:
        rows = sorted((r for r in shown if r["arm"] == arm), key=lambda r: -r["weights_remaining"])
        x = [100 * r["weights_remaining"] for r in rows]
        y = [100 * r["mean"] for r in rows]
        e = [100 * r["std"] for r in rows]
        color, marker, label = ARM_STYLE.get(arm, (None, "x", arm.replace("_", " ")))
        label += diverged_note(sum(r.get("diverged", 0) for r in summary if r["arm"] == arm))
        ax.errorbar(x, y, yerr=e if any(e) else None, color=color, marker=marker, ms=4, capsize=2, label=label)
    if dense is not None and not math.isnan(dense):   # NaN: the dense network diverged
        ax.axhline(100 * dense, color="gray", ls="--", lw=1, label=f"dense ({100 * dense:.1f}%)")
    if not shown:
        _nothing_to_show(ax)
        return _finish(fig, ax, "% weights remaining", "test accuracy (%)", title, legend=8 if arms else None)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({round(100 * r["weights_remaining"], 1) for r in shown}, reverse=True)
    if len(ticks) > 12:
        ticks = ticks[:: max(len(ticks) // 10, 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
    ax.minorticks_off()
    return _finish(fig, ax, "% weights remaining", "test accuracy (%)", title, legend=8)


# ------------------------------------------------------------------------------------ training dynamics
def lca_by_layer(steps: list[int], layers: dict[str, list[float]], title: str) -> bytes:
    """Cumulative LCA of each layer over training (Lan et al. 2019, Fig. 3 style); below zero = helped."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, values in layers.items():
        ax.plot(steps, np.cumsum(values), label=name or "(root)", lw=1.2)
    ax.axhline(0, color="gray", lw=0.8)
    return _finish(fig, ax, "iteration", "cumulative LCA (loss change)", title, legend=7)


def lca_fraction_helped(steps: list[int], fractions: dict[str, list[float]], title: str) -> bytes:
    """% of parameters with negative LCA at each iteration, one curve per run (seed / ticket)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, values in fractions.items():
        ax.plot(steps[:len(values)], [100 * v for v in values], lw=1, label=label)
    ax.axhline(50, color="gray", ls="--", lw=0.8)
    return _finish(fig, ax, "iteration", "% parameters helping (LCA < 0)", title, legend=8)


def lca_neuron_heatmap(values, layer: str, title: str) -> bytes:
    """Per-neuron LCA of one layer over training: rows neurons, columns iterations, red hurts, blue helps."""
    import numpy as np

    v = np.asarray(values).T
    # the first steps dwarf the rest: clip the colour scale at the 99th percentile of |LCA|
    a = np.abs(v)
    lim = float(np.percentile(a, 99)) if a.size else 0.0
    lim = lim or (float(a.max()) if a.size else 0.0) or 1.0
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    im = ax.imshow(v, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="LCA")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"neuron of {layer}")
    ax.set_title(title)
    return _png(fig)


def interpolation_error(curves: dict[str, tuple[list[float], list[float]]], title: str) -> bytes:
    """Test error along the straight path between two trained copies, one curve per rewind point k."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (alphas, errors) in curves.items():
        ax.plot(alphas, [100 * e for e in errors], marker=".", ms=3, lw=1, label=label)
    return _finish(fig, ax, "interpolation alpha", "test error (%)", title, legend=8)


def barrier_vs_rewind(series: dict[str, tuple[list[int], list[float]]], title: str) -> bytes:
    """Error barrier (max error on the path minus the endpoints' mean) against the step k of the copy."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (ks, barriers) in series.items():
        ax.plot(ks, [100 * b for b in barriers], marker="o", ms=4, label=label)
    ax.axhline(2, color="gray", ls="--", lw=0.8, label="2% (stable)")
    return _finish(fig, ax, "step k of the copy", "error barrier (%)", title, legend=8)


def supermask_curves(curves: dict, title: str) -> bytes:
    """Test accuracy of a learned supermask vs training step, one line per seed (sampled mask, solid;
    expected mask where there is one, dashed)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (seed, rows) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot([r["step"] for r in rows], [100 * r["test_accuracy"] for r in rows], color=color, label=f"seed {seed}")
        if any(r.get("expected_mask_accuracy") is not None for r in rows):
            ax.plot([r["step"] for r in rows], [100 * (r.get("expected_mask_accuracy") or 0) for r in rows], color=color,
                    ls="--", lw=1, label=f"seed {seed} (expected mask)")
    return _finish(fig, ax, "training step (scores)", "test accuracy (%)", title, legend=7, title_size=9)


def accuracy_by_criterion(summary: list[dict], title: str, dense: float | None = None) -> bytes:
    """Zhou et al. Fig. 2 style: test accuracy vs % weights remaining, one curve per mask criterion (mean +- std
    over seeds), the dense network as a horizontal line. `summary` rows: criterion, weights_remaining, mean, std."""
    rows = [{**r, "arm": r["criterion"]} for r in summary]
    return accuracy_vs_sparsity(rows, title, dense)


def mask_distance_matrix(matrices: dict[str, list[list[float]]], title: str, marks: dict[str, int | None] | None = None) -> bytes:
    """Normalised Hamming distance between the masks of every pair of epochs (You et al. 2020, Fig. 2),
    one panel per pruning ratio; a cross marks the early-bird epoch."""
    import numpy as np

    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (label, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m)
        im = ax.imshow(m, cmap="viridis_r", vmin=0, vmax=max(float(m.max()), 1e-9), origin="upper",
                       extent=(0.5, m.shape[0] + 0.5, m.shape[0] + 0.5, 0.5))
        eb = (marks or {}).get(label)
        if eb is not None:
            ax.plot([eb], [eb], "rx", ms=8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("epoch")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def ticket_accuracy_by_epoch(series: dict[str, tuple[list[int], list[float]]], title: str, dense: float | None = None) -> bytes:
    """Retrained accuracy of tickets drawn at each epoch."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (epochs, accs) in series.items():
        ax.plot(epochs, [100 * a for a in accs], marker="o", ms=4, label=label)
    if dense is not None:
        ax.axhline(100 * dense, color="gray", ls="--", lw=1, label=f"dense ({100 * dense:.1f}%)")
    return _finish(fig, ax, "epoch the ticket is drawn at", "test accuracy after retraining (%)", title, legend=8)


def sweep_curves(series: dict[str, dict], x: str, metric: str, title: str, log_x: bool = False) -> bytes:
    """One curve per label: {label: {x: [values over seeds]}}, mean with std error bars (the caller leaves
    out diverged units and says so in `title`)."""
    import statistics
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if not series:
        _nothing_to_show(ax)
    for label, points in series.items():
        xs = sorted(points, key=float, reverse=log_x)
        means = [statistics.fmean(points[v]) for v in xs]
        stds = [statistics.stdev(points[v]) if len(points[v]) > 1 else 0.0 for v in xs]
        ax.errorbar([float(v) * (100 if log_x else 1) for v in xs], means, yerr=stds, marker="o", ms=3, capsize=2, label=label)
    if log_x:
        ax.set_xscale("log")
        ax.invert_xaxis()
    return _finish(fig, ax, "% weights remaining" if log_x else x, metric.replace("_", " "), title,
                   legend=7 if len(series) > 1 else None)


# ------------------------------------------------------------------------------------ referential game
def topographic_similarity_curves(curves: dict[str, tuple[list[int], list[float], list[float]]], title: str) -> bytes:
    """Topographic similarity vs iterations, one curve per arm (mean over seeds, a band of one std)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, (steps, mean, std) in curves.items():
        line, = ax.plot(steps, mean, lw=1.5, label=arm)
        if any(std):
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2, lw=0)
    if not curves:
        _nothing_to_show(ax, "no finished game")
    return _finish(fig, ax, "iterations", "topographic similarity", title, legend=8, title_size=9)


# ------------------------------------------------------------------------------------- forget-and-relearn
def accuracy_vs_generation(summary: list[dict], title: str, long: dict | None = None) -> bytes:
    """Test accuracy after each generation, one curve per forgetting method (mean +- std over seeds), each
    starting from generation 0 (`none`, shared), and the long baseline (the same total training in one go) as a
    horizontal line. `summary` rows: method, generation, mean, std, n, diverged (`Results.summary`)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    start = [r for r in summary if r["method"] == "none" and r.get("n")]
    methods = [m for m in dict.fromkeys(r["method"] for r in summary) if m not in ("none", "long")]
    for i, method in enumerate(methods):
        rows = sorted((r for r in summary if r["method"] == method and r.get("n")), key=lambda r: r["generation"])
        rows = start + rows
        label = method + diverged_note(sum(r.get("diverged", 0) for r in summary if r["method"] == method))
        ax.errorbar([r["generation"] for r in rows], [100 * r["mean"] for r in rows],
                    yerr=[100 * r["std"] for r in rows] if any(r["std"] for r in rows) else None,
                    color=f"C{i % 10}", marker="o", ms=3, capsize=2, label=label)
    if not methods and start:
        ax.plot([0], [100 * start[0]["mean"]], "ko", label="generation 0")
    if long is not None and long.get("n") and not math.isnan(long["mean"]):
        ax.axhline(100 * long["mean"], color="gray", ls="--", lw=1,
                   label=f"long ({100 * long['mean']:.1f}%, same total steps)")
    if not methods and not start:
        _nothing_to_show(ax)
    return _finish(fig, ax, "generation", "test accuracy (%)", title, legend=8)


def probe_drops(rows: list[dict], title: str) -> bytes:
    """Targeted forgetting: the accuracy drop (before - after forgetting a copy) of each group over training,
    one panel per method, mean over seeds. `rows`: method, step, group, accuracy_before, accuracy_after."""
    import statistics

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(3.6 * max(len(methods), 1), 3.4), squeeze=False, sharey=True)
    if not methods:
        _nothing_to_show(axes[0][0], "no probes recorded")
    for ax, method in zip(axes[0], methods):
        part = [r for r in rows if r["method"] == method]
        for i, group in enumerate(dict.fromkeys(r["group"] for r in part)):
            by_step: dict[int, list[float]] = {}
            for r in part:
                if r["group"] == group and r["accuracy_before"] is not None and r["accuracy_after"] is not None:
                    by_step.setdefault(int(r["step"]), []).append(100 * (float(r["accuracy_before"]) - float(r["accuracy_after"])))
            steps = sorted(by_step)
            ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], color=f"C{i}", marker=".", ms=3, label=group)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy drop from forgetting (points)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def lr_range(curves: dict, summary: dict, title: str) -> bytes:
    """The LR range test (Smith 2017): training loss vs learning rate (log x), raw (faint) and smoothed per
    seed; dashed lines at the suggested rate (steepest descent) and at the point before divergence."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (seed, rows) in enumerate(curves.items()):
        color = f"C{i % 10}"
        kept = [r for r in rows if r.get("smoothed_loss") is not None]
        raw = [r for r in rows if r.get("loss") is not None]
        ax.plot([r["lr"] for r in raw], [r["loss"] for r in raw], color=color, alpha=0.25, lw=0.8)
        ax.plot([r["lr"] for r in kept], [r["smoothed_loss"] for r in kept], color=color, label=f"seed {seed} (smoothed)")
    for key, label, color in (("suggested_lr", "suggested (steepest descent)", "tab:green"),
                              ("max_lr", "before divergence (lowest loss)", "tab:red")):
        if summary.get(key):
            ax.axvline(summary[key], color=color, ls="--", lw=1, label=f"{label}: {summary[key]:.2g}")
    ax.set_xscale("log")
    smoothed = [r["smoothed_loss"] for rows in curves.values() for r in rows if r.get("smoothed_loss") is not None]
    if smoothed:   # the exploding tail would flatten everything else
        ax.set_ylim(min(smoothed) * 0.9, max(smoothed) * 1.3)
    return _finish(fig, ax, "learning rate", "training loss", title, legend=7, title_size=9)



# ------------------------------------------------------------------------------------- pruning at init
AT_INIT_LINES = {"pruned": ("-", "o"), "reshuffle": (":", "v"), "reinit": ("-.", "s")}


def at_init_vs_imp(summary: list[dict], imp: list[dict], title: str, dense: float | None = None) -> bytes:
    """Pruning at initialisation beside IMP (Frankle et al. 2021, Fig. 1 style): test accuracy vs % weights
    remaining (log x, decreasing to the right), a colour per method (the pruned network solid, its reshuffle
    and reinit controls dotted and dash-dotted), IMP tickets of a compared lottery run dashed black, the dense
    network a grey line. `summary`: method, arm, density, weights_remaining, mean, std, n, diverged rows
    (`Results.summary`); `imp`: level, weights_remaining, mean, std rows."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    methods = [m for m in dict.fromkeys(r["method"] for r in summary) if m != "dense"]
    xs = []
    for i, method in enumerate(methods):
        for arm in dict.fromkeys(r["arm"] for r in summary if r["method"] == method):
            part = [r for r in summary if r["method"] == method and r["arm"] == arm]
            shown = sorted((r for r in part if r.get("n") and r["weights_remaining"] is not None),
                           key=lambda r: -r["weights_remaining"])
            ls, marker = AT_INIT_LINES.get(arm, ("--", "x"))
            label = method + ("" if arm == "pruned" else f" ({arm})") + diverged_note(sum(r.get("diverged", 0) for r in part))
            x = [100 * r["weights_remaining"] for r in shown]
            e = [100 * r["std"] for r in shown]
            ax.errorbar(x, [100 * r["mean"] for r in shown], yerr=e if any(e) else None, color=f"C{i % 10}", ls=ls,
                        marker=marker, ms=4, capsize=2, lw=1.6 if arm == "pruned" else 1.0, label=label)
            xs += x
    shown = sorted((r for r in imp if r.get("n") and r.get("weights_remaining") is not None and r["weights_remaining"] < 1),
                   key=lambda r: -r["weights_remaining"])
    if shown:
        x = [100 * r["weights_remaining"] for r in shown]
        e = [100 * r["std"] for r in shown]
        ax.errorbar(x, [100 * r["mean"] for r in shown], yerr=e if any(e) else None, color="black", ls="--", marker=".",
                    ms=4, capsize=2, lw=1.4, label="IMP tickets (lottery)")
        xs += x
    if dense is not None and not math.isnan(dense):
        ax.axhline(100 * dense, color="gray", ls="--", lw=1, label=f"dense ({100 * dense:.1f}%)")
    if not xs:
        _nothing_to_show(ax)
        return _finish(fig, ax, "% weights remaining", "test accuracy (%)", title, legend=7)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({round(v, 1) for v in xs}, reverse=True)
    if len(ticks) > 12:
        ticks = ticks[:: max(len(ticks) // 10, 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
    ax.minorticks_off()
    return _finish(fig, ax, "% weights remaining", "test accuracy (%)", title, legend=6, title_size=9)
