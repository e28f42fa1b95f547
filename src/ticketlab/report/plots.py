"""PNG plots in the papers' style (matplotlib, Agg backend), returned as bytes for the store to write."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARM_STYLE = {"ticket": ("tab:blue", "o", "winning ticket"), "random_reinit": ("tab:orange", "s", "random reinit"),
             "random_prune": ("tab:green", "^", "random pruning"), "reshuffle": ("tab:purple", "v", "reshuffle")}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def accuracy_vs_sparsity(summary: list[dict], title: str, dense: float | None = None) -> bytes:
    """Test accuracy vs % weights remaining (log x, decreasing to the right), one curve per arm, mean +- std
    over seeds, and the dense network's accuracy as a horizontal line (Frankle & Carbin, Fig. 3 style)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms = list(dict.fromkeys(r["arm"] for r in summary))
    for arm in arms:
        rows = sorted((r for r in summary if r["arm"] == arm), key=lambda r: -r["weights_remaining"])
        x = [100 * r["weights_remaining"] for r in rows]
        y = [100 * r["mean"] for r in rows]
        e = [100 * r["std"] for r in rows]
        color, marker, label = ARM_STYLE.get(arm, (None, "x", arm.replace("_", " ")))
        ax.errorbar(x, y, yerr=e if any(e) else None, color=color, marker=marker, ms=4, capsize=2, label=label)
    if dense is not None:
        ax.axhline(100 * dense, color="gray", ls="--", lw=1, label=f"dense ({100 * dense:.1f}%)")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({round(100 * r["weights_remaining"], 1) for r in summary}, reverse=True)
    if len(ticks) > 12:
        ticks = ticks[:: max(len(ticks) // 10, 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
    ax.minorticks_off()
    ax.set_xlabel("% weights remaining")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
