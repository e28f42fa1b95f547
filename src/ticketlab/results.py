"""Results as a small table of records: what experiments return in Python and what `show` prints."""

from __future__ import annotations

import json
import math
import statistics
from typing import Iterable

from .store import rows_to_csv


def cell_value(value):
    """A CSV cell as a number where it is one (bools stay text: "True"), else as it was; "" is None."""
    if isinstance(value, str):
        if value == "":
            return None
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def is_diverged(row: dict) -> bool:
    """Whether a result row is of a unit that diverged (its `diverged` column: a bool, or its text in a CSV)."""
    value = row.get("diverged")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def diverged_count(rows: Iterable[dict]) -> int:
    return sum(is_diverged(r) for r in rows)


def diverged_columns(result: dict) -> dict:
    """The `diverged` and `diverged_reason` columns of a unit's row in results.csv / results.json (every
    experiment's rows have them)."""
    diverged = is_diverged(result)
    return {"diverged": diverged, "diverged_reason": result.get("diverged_reason") if diverged else None}


class Results:
    """A list of dict rows in long (tidy) form, one per level x arm x seed (or per experiment's unit).

    `rows` are plain dicts; `to_pandas()` gives a DataFrame where pandas is installed.
    """

    def __init__(self, rows: Iterable[dict]):
        self.rows = [dict(r) for r in rows]

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        return cols

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def where(self, **equal) -> "Results":
        return Results(r for r in self.rows if all(r.get(k) == v for k, v in equal.items()))

    def column(self, name: str) -> list:
        return [r.get(name) for r in self.rows]

    def to_csv(self) -> str:
        return rows_to_csv(self.rows)

    def to_json(self) -> str:
        from .io import finite

        return json.dumps(finite(self.rows), indent=2, allow_nan=False)

    def to_pandas(self):
        import pandas as pd  # optional: only for users who have it
        return pd.DataFrame(self.rows)

    def summary(self, by: tuple[str, ...] = ("level", "arm"), value: str = "test_accuracy") -> list[dict]:
        """Mean, standard deviation and count (`n`) of `value` per group, in first-seen order. Rows of units
        that diverged are left out and counted (`diverged`); a group with none left has mean NaN (null in JSON)."""
        groups: dict[tuple, list[dict]] = {}
        for r in self.rows:
            groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
        out = []
        for key, rows in groups.items():
            healthy = [r for r in rows if not is_diverged(r)]
            vals = [float(r[value]) for r in healthy if r.get(value) not in (None, "")]
            row = dict(zip(by, key))
            for extra in ("weights_remaining",):
                if extra in rows[0] and extra not in row:
                    known = [r[extra] for r in rows if r.get(extra) not in (None, "")]
                    row[extra] = float(known[0]) if known else None
            row.update(mean=statistics.fmean(vals) if vals else math.nan,
                       std=statistics.stdev(vals) if len(vals) > 1 else 0.0, n=len(vals),
                       diverged=len(rows) - len(healthy))
            out.append(row)
        return out

    def __repr__(self) -> str:
        return f"Results({len(self.rows)} rows; columns: {', '.join(self.columns)})"
