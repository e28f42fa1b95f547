"""Terminal tables of an experiment's result rows, without torch (`ticketlab show` prints them).

`TABLES[experiment](rows)` gives the lines of that experiment's table; experiments without one are printed
as aligned columns by the CLI. The experiment modules re-export their functions (`experiments.lottery.table`,
`header`, `format_row`, ...), which also print the same lines while they run.

Units that diverged are left out of every mean: a cell whose units all diverged reads "diverged", one
where some did says how many ("(1 diverged)") after the mean of the others.
"""

from __future__ import annotations

from ..results import Results, is_diverged


def _number(value) -> float | None:
    """A cell's number (rows read back from a CSV hold text; empty: none)."""
    return None if value in (None, "") else float(value)


def percent_cell(summary: dict, width: int = 15) -> str:
    """Mean ± std % of a `Results.summary` row, "diverged" when every unit of it diverged."""
    n, dropped = summary["n"], summary.get("diverged", 0)
    if not n:
        return f"{'diverged' if dropped else '-':>{width}}"
    m, sd = 100 * summary["mean"], 100 * summary["std"]
    cell = f"{m:>7.2f} ± {sd:4.2f}%" if n > 1 else f"{m:>14.2f}%"
    return f"{cell:>{width}}" + (f" ({dropped} diverged)" if dropped else "")


# --------------------------------------------------------------------------------------------- lottery
def lottery(rows: list[dict]) -> list[str]:
    """The terminal table of a lottery run: one line per level, mean ± std per arm."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = [header(arms)]
    for level in sorted({r["level"] for r in rows}):
        lines.append(format_row(level, [r for r in rows if r["level"] == level], arms))
    return lines


def header(arms: list[str]) -> str:
    return f"{'level':>5} {'remaining':>9}  " + "  ".join(f"{a:>15}" for a in arms)


def format_row(level: int, rows: list[dict], arms: list[str]) -> str:
    res = Results(rows)
    cells = []
    for arm in arms:
        s = res.summary(("arm",))
        s = [r for r in s if r["arm"] == arm]
        cells.append(percent_cell(s[0]) if s else f"{'-':>15}")
    known = [_number(r.get("weights_remaining")) for r in rows if _number(r.get("weights_remaining")) is not None]
    remaining = f"{100 * known[0]:>8.2f}%" if known else f"{'-':>9}"   # unknown: every unit's training was skipped
    return f"{level:>5} {remaining}  " + "  ".join(cells)


# ----------------------------------------------------------------------------------------- deconstruct
def deconstruct(rows: list[dict]) -> list[str]:
    """The lines `ticketlab show` can print for a deconstruct run: per phase and mask-1 action, a level x
    criterion table of mean ± std test accuracy."""
    rows = [{**r, "level": int(r["level"]), "weights_remaining": _number(r.get("weights_remaining")),
             "test_accuracy": _number(r.get("test_accuracy"))} for r in rows]
    dense = [{**r, "arm": "dense"} for r in rows if r["criterion"] == "dense"]
    lines = [header(["dense"])] + ([format_row(0, dense, ["dense"])] if dense else [])
    criteria = list(dict.fromkeys(r["criterion"] for r in rows if r["criterion"] != "dense"))
    for phase in ("trained", "untrained"):
        for action in dict.fromkeys(r["mask_one"] for r in rows if r["phase"] == phase and r["criterion"] != "dense"):
            part = [{**r, "arm": r["criterion"]} for r in rows
                    if r["phase"] == phase and r["mask_one"] == action and r["criterion"] != "dense"]
            lines.append(f"{phase}, {'weights' if phase == 'untrained' else 'mask-1'} {action}:")
            lines.append("  " + header(criteria))
            for level in sorted({r["level"] for r in part}):
                lines.append("  " + format_row(level, [r for r in part if r["level"] == level], criteria))
    return lines


# ------------------------------------------------------------------------------------------- supermask
def supermask(rows: list[dict]) -> list[str]:
    """The lines `ticketlab show` can print for a supermask run: one per seed, then the mean."""
    lines = [f"{'seed':>4} {'method':>10} {'kept':>7} {'test acc':>9} {'expected-mask acc':>18}"]
    for r in rows:
        lines.append(supermask_line(r))
    healthy = [r for r in rows if not is_diverged(r)]
    acc = [float(r["test_accuracy"]) for r in healthy]
    dropped = len(rows) - len(healthy)
    mean = f"{100 * sum(acc) / len(acc):>8.2f}%" if acc else f"{'diverged':>9}"
    lines.append(f"{'mean':>4} {'':>10} {'':>7} {mean}" + (f" ({dropped} diverged, left out)" if dropped and acc else ""))
    return lines


def supermask_line(r: dict) -> str:
    """One seed's line of the supermask table (its result, or a CSV row of it)."""
    if is_diverged(r):
        return f"{int(r['seed']):>4} {r['method']:>10} {'-':>7} {'diverged':>9}"
    exp = _number(r.get("expected_mask_accuracy"))
    return (f"{int(r['seed']):>4} {r['method']:>10} {100 * float(r['weights_remaining']):>6.2f}% "
            f"{100 * float(r['test_accuracy']):>8.2f}% {'-' if exp is None else f'{100 * exp:.2f}%':>18}")

# ----------------------------------------------------------------------------------------- referential
def referential(rows: list[dict]) -> list[str]:
    """The terminal table of a referential-game run: per arm, topographic similarity and accuracy (mean ±
    std over seeds) at the last measured iteration."""
    rows = [r for r in rows if r.get("topographic_similarity") not in (None, "")]
    if not rows:
        return []
    last = max(int(r["step"]) for r in rows)
    lines = [f"after {last} iterations:", f"{'arm':>15} {'seeds':>5} {'topographic sim.':>17} {'accuracy':>16}"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        final = [r for r in rows if r["arm"] == arm and int(r["step"]) == last]
        ts = [float(r["topographic_similarity"]) for r in final]
        acc = [float(r["accuracy"]) for r in final]
        lines.append(f"{arm:>15} {len(final):>5} {_mean_std(ts, 1):>17} {_mean_std(acc, 100, '%'):>16}")
    return lines


def _mean_std(values: list[float], scale: float, unit: str = "") -> str:
    if not values:
        return "-"
    m = scale * sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.3f}{unit}" if not unit else f"{m:.2f}{unit}"
    sd = scale * (sum((v - m / scale) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{m:.3f} ± {sd:.3f}" if not unit else f"{m:.2f} ± {sd:.2f}{unit}"



# ---------------------------------------------------------------------------------------------- forget
BASELINES = ("none", "long")


def _forget_rows(rows: list[dict]) -> list[dict]:
    return [{**r, "generation": int(r["generation"])} for r in rows]


def forget_header(methods: list[str]) -> str:
    return f"{'gen':>4}  " + "  ".join(f"{m:>15}" for m in methods)


def forget_line(generation: int, rows: list[dict], methods: list[str]) -> str:
    """Test accuracy (mean ± std over seeds) of each method after `generation`; generation 0, the plain training
    every chain starts from (`none`), fills every column."""
    by = {r["method"]: r for r in Results(_forget_rows(rows)).summary(("method",))}
    cells = []
    for m in methods:
        s = by.get("none" if generation == 0 else m)
        cells.append(percent_cell(s) if s else f"{'-':>15}")
    return f"{generation:>4}  " + "  ".join(cells)


def forget(rows: list[dict]) -> list[str]:
    """The terminal table of a forget run: test accuracy per generation and method, then each arm after its
    last generation (baselines: `none`, generation 0 alone; `long`, the same total steps in one training) with
    its train accuracy (with label noise also on the clean and on the mislabeled examples, against the labels
    trained on: the latter is memorisation)."""
    if rows and "topographic_similarity" in rows[0]:   # `--task referential-game`
        return referential(rows)
    rows = _forget_rows(rows)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in BASELINES]
    lines = []
    if methods:
        lines.append(forget_header(methods))
        for g in sorted({r["generation"] for r in rows if r["method"] != "long"}):
            lines.append(forget_line(g, [r for r in rows if r["generation"] == g and r["method"] != "long"], methods))
        lines.append("")
    noisy = any(_number(r.get("train_accuracy_mislabeled")) is not None for r in rows)
    values = ("test_accuracy", "train_accuracy") + (("train_accuracy_clean", "train_accuracy_mislabeled") if noisy else ())
    lines.append(f"{'arm':>8} {'gen':>4}  " + "  ".join(f"{v.replace('_accuracy', ' acc').replace('_', ' '):>15}" for v in values))
    for arm in methods + [b for b in BASELINES if any(r["method"] == b for r in rows)]:
        part = [r for r in rows if r["method"] == arm]
        last = max(r["generation"] for r in part)
        final = Results([r for r in part if r["generation"] == last])
        cells = [percent_cell(final.summary(("method",), v)[0]) for v in values]
        lines.append(f"{arm:>8} {last if arm != 'long' else 'all':>4}  " + "  ".join(cells))
    return lines


# ---------------------------------------------------------------------------------------- sparse-train
def sparse_train(rows: list[dict]) -> list[str]:
    """The terminal table of a sparse-train run: one line per target density (with the mean % weights
    remaining the units ended with), mean ± std test accuracy per method."""
    rows = [{**r, "density": float(r["density"]), "weights_remaining": _number(r.get("weights_remaining")),
             "test_accuracy": _number(r.get("test_accuracy"))} for r in rows]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"{'density':>7} {'remaining':>9}  " + "  ".join(f"{m:>15}" for m in methods)]
    for density in sorted({r["density"] for r in rows}, reverse=True):
        part = [r for r in rows if r["density"] == density]
        by = {r["method"]: r for r in Results(part).summary(("method",))}
        known = [r["weights_remaining"] for r in part if r["weights_remaining"] is not None]
        remaining = f"{100 * sum(known) / len(known):>8.2f}%" if known else f"{'-':>9}"
        cells = [percent_cell(by[m]) if m in by else f"{'-':>15}" for m in methods]
        lines.append(f"{density:>7g} {remaining}  " + "  ".join(cells))
    return lines


TABLES = {"lottery": lottery, "deconstruct": deconstruct, "supermask": supermask, "referential": referential, "forget": forget,
          "sparse-train": sparse_train}


# ------------------------------------------------------------------------------------------- lr-range
def lr_range(rows: list[dict]) -> list[str]:
    """The lines of an LR range test: one per seed (suggested rate, the range, where it stopped), then the
    geometric mean of the rates."""
    import math

    lines = [f"{'seed':>4} {'suggested lr':>13} {'min lr':>10} {'max lr':>10} {'stopped at':>12}"]
    lines += [lr_range_line(r) for r in rows]
    if len(rows) > 1:
        def geomean(key):
            values = [float(r[key]) for r in rows if _number(r.get(key))]
            return f"{math.exp(sum(map(math.log, values)) / len(values)):.3g}" if values else "-"
        lines.append(f"{'mean':>4} {geomean('suggested_lr'):>13} {geomean('min_lr'):>10} {geomean('max_lr'):>10}")
    return lines


def lr_range_line(r: dict) -> str:
    """One seed's line of the LR range table (its result, or a CSV row of it)."""
    stopped = _number(r.get("stopped_lr"))
    return (f"{int(r['seed']):>4} {float(r['suggested_lr']):>13.3g} {float(r['min_lr']):>10.3g} {float(r['max_lr']):>10.3g} "
            f"{'-' if stopped is None else f'lr {stopped:.3g}':>12}")


TABLES["lr-range"] = lr_range


# -------------------------------------------------------------------------------------- prune-at-init
def nearest_levels(rows: list[dict], densities) -> dict[float, int]:
    """For each density, the IMP level (rows with `method = imp`) whose weights remaining is nearest to it
    (by ratio: 0.05 is as near 0.04 as 0.0625)."""
    import math

    imp = {}
    for r in rows:
        if r.get("method") == "imp" and _number(r.get("weights_remaining")):
            imp.setdefault(int(r["level"]), float(r["weights_remaining"]))
    if not imp:
        return {}
    return {d: min(imp, key=lambda lv: (abs(math.log(imp[lv] / d)), lv)) for d in densities}


def prune_at_init(rows: list[dict]) -> list[str]:
    """The terminal table of a prune-at-init run: a line per method and arm (pruned, reshuffle, reinit), a column
    per density, mean ± std test accuracy over seeds; the dense network; IMP tickets of a compared lottery run
    at the level nearest each density (its weights remaining in the line below)."""
    rows = [{**r, "density": _number(r.get("density")), "weights_remaining": _number(r.get("weights_remaining")),
             "test_accuracy": _number(r.get("test_accuracy"))} for r in rows]
    own = [r for r in rows if r["method"] not in ("dense", "imp")]
    densities = sorted({r["density"] for r in own}, reverse=True)
    lines = [f"{'method':>10} {'arm':>10}  " + "  ".join(f"{f'{100 * d:g}% kept':>15}" for d in densities)]
    dense = Results([r for r in rows if r["method"] == "dense"]).summary(("method",))
    if dense:
        lines.append(f"{'dense':>10} {'':>10}  {percent_cell(dense[0])}")
    summary = {(s["method"], s["arm"], s["density"]): s for s in Results(own).summary(("method", "arm", "density"))}
    for method, arm in dict.fromkeys((r["method"], r["arm"]) for r in own):
        cells = [percent_cell(summary[(method, arm, d)]) if (method, arm, d) in summary else f"{'-':>15}" for d in densities]
        lines.append(f"{method:>10} {arm:>10}  " + "  ".join(cells))
    nearest = nearest_levels(rows, densities)
    if nearest:
        imp = [r for r in rows if r["method"] == "imp"]
        cells, where = [], []
        for d in densities:
            part = [r for r in imp if int(r["level"]) == nearest[d]]
            cells.append(percent_cell(Results(part).summary(("method",))[0]))
            at = f"level {nearest[d]}, {100 * part[0]['weights_remaining']:.2f}%"
            where.append(f"{at:>15}")
        lines.append(f"{'imp':>10} {'ticket':>10}  " + "  ".join(cells))
        lines.append(f"{'':>10} {'':>10}  " + "  ".join(where))
    return lines


TABLES["prune-at-init"] = prune_at_init
