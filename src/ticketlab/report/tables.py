"""Terminal tables of an experiment's result rows, without torch (`ticketlab show` prints them).

`TABLES[experiment](rows)` gives the lines of that experiment's table; experiments without one are printed
as aligned columns by the CLI. The experiment modules re-export their functions (`experiments.lottery.table`,
`header`, `format_row`, ...), which also print the same lines while they run.
"""

from __future__ import annotations

from ..results import Results


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
        if not s:
            cells.append(f"{'-':>15}")
        else:
            m, sd, n = 100 * s[0]["mean"], 100 * s[0]["std"], s[0]["n"]
            cells.append(f"{m:>7.2f} ± {sd:4.2f}%" if n > 1 else f"{m:>14.2f}%")
    return f"{level:>5} {100 * rows[0]['weights_remaining']:>8.2f}%  " + "  ".join(cells)


# ----------------------------------------------------------------------------------------- deconstruct
def deconstruct(rows: list[dict]) -> list[str]:
    """The lines `ticketlab show` can print for a deconstruct run: per phase and mask-1 action, a level x
    criterion table of mean ± std test accuracy."""
    rows = [{**r, "level": int(r["level"]), "weights_remaining": float(r["weights_remaining"]),
             "test_accuracy": float(r["test_accuracy"])} for r in rows]
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
        exp = r.get("expected_mask_accuracy")
        exp = None if exp in (None, "") else float(exp)
        lines.append(f"{int(r['seed']):>4} {r['method']:>10} {100 * float(r['weights_remaining']):>6.2f}% "
                     f"{100 * float(r['test_accuracy']):>8.2f}% {'-' if exp is None else f'{100 * exp:.2f}%':>18}")
    acc = [float(r["test_accuracy"]) for r in rows]
    lines.append(f"{'mean':>4} {'':>10} {'':>7} {100 * sum(acc) / max(len(acc), 1):>8.2f}%")
    return lines


TABLES = {"lottery": lottery, "deconstruct": deconstruct, "supermask": supermask}
