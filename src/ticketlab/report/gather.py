"""The rows of a run or sweep folder, finished or not, for `ticketlab show`.

A finished run or sweep has its `results.csv`: that is the answer. An unfinished run is the rows of its
finished units (each unit's `result.json`, checked against its manifest); an unfinished sweep is the rows
of its points' run folders, each as above, with the sweep's axis values in front.

Reading thousands of units or points one by one is the slow part, so the rows read are kept in a small
index file, `rows-index.json`, in the folder shown: one entry per unit (or point) with the rows and the
size and modification time of its `MANIFEST.json` and of the file they came from. The next `show` uses an
entry whose files are unchanged and reads the others again, so the index is rebuilt from the unit files
whenever it is missing, stale or unreadable. It is a cache: never listed in a manifest, never needed, and
not written where the folder is read-only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import CorruptFile, atomic_write_text, finite
from ..store import MANIFEST, Unit

INDEX = "rows-index.json"
FORMAT = 1


class RowIndex:
    """Cached rows of the units (or run folders) below `folder`."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / INDEX
        self.entries: dict = {}
        self.changed = False
        try:
            data = json.loads(self.path.read_bytes())
            if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, ValueError):
            pass

    def rows(self, unit: Unit, name: str, key: str, *, complete: bool):
        """The decoded `name` of `unit` (checked against its manifest; `complete`: only from a finished
        unit), from the index when neither file changed since; None when it is missing or corrupt."""
        stamp = _stamp(os.path.join(unit.path, MANIFEST)) + _stamp(os.path.join(unit.path, name))
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and "rows" in entry:
            return entry["rows"]
        m = unit.manifest()
        try:
            value = unit.read(name, m) if m and (m.get("complete") or not complete) else None
        except CorruptFile:
            value = None
        self.entries[key] = {"stamp": stamp, "rows": value}
        self.changed = True
        return value

    def save(self) -> None:
        if not self.changed:
            return
        live = {k: v for k, v in self.entries.items() if v.get("rows") is not None}
        try:
            # not sorted: rows keep their columns' order
            index = {"format": FORMAT, "entries": live}
            try:
                text = json.dumps(index, allow_nan=False)
            except ValueError:   # a non-finite number somewhere (rare): walk it all to write it as null
                text = json.dumps(finite(index), allow_nan=False)
            atomic_write_text(self.path, text)
        except OSError:   # a read-only (shared) folder: the index is only a cache
            pass


def _stamp(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [None, None]
    return [st.st_mtime_ns, st.st_size]


def run_rows(folder: Path, index: RowIndex | None = None, prefix: str = "") -> tuple[list[dict], bool]:
    """(rows, partial): the run's results.csv, else the rows of its finished units, each named by its
    folder (a unit's own row may lack what names it in the report, e.g. deconstruct's criterion)."""
    folder = Path(folder)
    own = index is None
    index = index or RowIndex(folder)
    rows = index.rows(Unit(folder), "results.csv", prefix + "results.csv", complete=False)
    if isinstance(rows, list):
        if own:
            index.save()
        return rows, False
    rows = []
    for f in sorted(folder.rglob("result.json")):
        rel = f.parent.relative_to(folder).as_posix()
        row = index.rows(Unit(f.parent), "result.json", prefix + rel, complete=True)
        if isinstance(row, dict):
            rows.append({"unit": rel, **row})
    if own:
        index.save()
    return rows, True


def sweep_rows(folder: Path, points: list) -> tuple[list[dict], bool]:
    """(rows, partial) of an unfinished sweep: every point's rows after its axis values."""
    folder = Path(folder)
    index = RowIndex(folder)
    rows, partial = [], False
    for point in points:
        if not (isinstance(point, dict) and isinstance(point.get("run"), str)):
            raise CorruptFile(f"{folder / 'spec.json'}: a point without its run folder")
        run = folder.parent / point["run"]
        axes = {k: v for k, v in point.items() if k != "run"}
        got, part = run_rows(run, index, prefix=point["run"] + "/") if os.path.isdir(run) else ([], True)
        rows += [{**axes, **r} for r in got]
        partial = partial or part
    index.save()
    return rows, partial
