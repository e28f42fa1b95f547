"""`--tensorboard DIR`: TensorBoard event files of a run's training curves and per-level results.

Written by the main process only, from what the run folders hold: a unit's curves (`metrics.jsonl`, or a
game's `curve.jsonl`) as soon as the unit is committed or read back (so resumed, stacked, worker and Ray
runs all log the same), and an experiment's per-level rows (accuracy and weights remaining of each arm)
when its report is written. The run names are the unit folders (`lottery-<hash>/seed-0/level-03/ticket`)
and `<run folder>/levels/<arm>`, each holding one event file with a fixed name, replaced atomically and
left alone when its contents would not change: running a finished run again writes nothing twice.

Uses TensorBoard's own protocol buffers and record writer (the optional extra `ticketlab[tensorboard]`);
neither TensorFlow nor torch.utils.tensorboard's writer thread is involved.
"""

from __future__ import annotations

import math
import os
import struct
import time
from pathlib import Path

from ..errors import UserError, os_fault

MISSING = "--tensorboard needs TensorBoard: pip install 'ticketlab[tensorboard]'"
EVENT_FILE = "events.out.tfevents.0.ticketlab"   # TensorBoard reads every file whose name holds "tfevents"
CURVE_FILES = ("metrics.jsonl", "curve.jsonl")
NOT_MEASURES = {"step", "seed", "level", "diverged"}
LEVEL_MEASURES = ("test_accuracy", "weights_remaining", "test_loss", "early_stop_step", "error_barrier")
LEVEL_KEYS = ("copy_step",)   # integer columns that, like the text ones (arm, criterion, ...), name a curve


def require() -> None:
    """UserError (exit 2) unless TensorBoard is installed; checked before a run starts."""
    try:
        import tensorboard  # noqa: F401
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401
    except ImportError:
        raise UserError(MISSING) from None


class Board:
    """The event files under one `--tensorboard` folder."""

    def __init__(self, folder: str | os.PathLike):
        require()
        self.root = Path(folder).absolute()

    # ------------------------------------------------------------------------------------------ what
    def unit(self, exp, key) -> None:
        """The training curves of a committed (or read back) unit, if it has any."""
        from ..io import CorruptFile

        unit = exp.unit_of(key)
        for name in CURVE_FILES:
            if not (unit.path / name).is_file():
                continue
            try:
                rows = unit.read(name)
            except CorruptFile:
                return
            if isinstance(rows, list):
                self.write(exp.unit_name(key), curve_scalars(rows))
            return

    def levels(self, exp, rows: list[dict]) -> None:
        """Per-level results of an experiment's report, one run per arm: `<run folder>/levels/<arm>`."""
        for name, scalars in level_scalars(rows).items():
            self.write(f"{exp.run.path.name}/levels/{name}", scalars)

    # ------------------------------------------------------------------------------------------ how
    def write(self, run: str, scalars: list[tuple[str, int, float]]) -> None:
        """One run's event file: `scalars` as (tag, step, value). Replaced atomically; not rewritten when
        its contents are unchanged (the wall time of the file already there is kept for the comparison)."""
        if not scalars:
            return
        path = self.root / run / EVENT_FILE
        try:
            old = path.read_bytes() if path.is_file() else None
            if old is not None and _events(scalars, _wall_time(old)) == old:
                return
            data = _events(scalars, time.time())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{EVENT_FILE}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            raise os_fault(e) from None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def curve_scalars(rows: list[dict]) -> list[tuple[str, int, float]]:
    """Every numeric measure of every row against its step (the row's index where it has none); a dict of
    numbers (per layer, say) becomes `measure/name` tags."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            continue
        step = row.get("step", i)
        step = int(step) if isinstance(step, int) and not isinstance(step, bool) else i
        for tag, value in row.items():
            if tag in NOT_MEASURES:
                continue
            if isinstance(value, dict):
                out += [(f"{tag}/{k}", step, v) for k, v in ((k, _number(v)) for k, v in value.items()) if v is not None]
            elif (v := _number(value)) is not None:
                out.append((tag, step, v))
    return out


def level_scalars(rows: list[dict]) -> dict[str, list[tuple[str, int, float]]]:
    """{run name (the arm, or what else names a curve): [(tag, level, value)]} of the rows that have a
    level: `level/<measure>`, the mean over seeds, and `level/<measure>/seed-<s>` per seed when there are
    several. Diverged rows (no numbers) are left out."""
    groups: dict[str, dict[tuple[str, int], dict]] = {}
    seeds = {r.get("seed") for r in rows if isinstance(r, dict)}
    for r in rows:
        if not isinstance(r, dict) or not isinstance(r.get("level"), int) or isinstance(r.get("level"), bool):
            continue
        names = [str(v) for k, v in r.items() if isinstance(v, str) and k != "diverged_reason"]
        names += [f"{k}={r[k]}" for k in LEVEL_KEYS if r.get(k) is not None]
        group = groups.setdefault("-".join(names) or "all", {})
        for measure in LEVEL_MEASURES:
            if (v := _number(r.get(measure))) is not None:
                group.setdefault((measure, r["level"]), {})[r.get("seed")] = v
    out = {}
    for name, values in groups.items():
        scalars = []
        for (measure, level), by_seed in sorted(values.items()):
            scalars.append((f"level/{measure}", level, sum(by_seed.values()) / len(by_seed)))
            if len(seeds) > 1 and measure != "weights_remaining":
                scalars += [(f"level/{measure}/seed-{s}", level, v) for s, v in sorted(by_seed.items(), key=str)]
        out[name] = scalars
    return out


def _events(scalars: list[tuple[str, int, float]], wall_time: float) -> bytes:
    """An event file's bytes: the version record, then one event per scalar."""
    import io

    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(wall_time=wall_time, step=0, file_version="brain.Event:2").SerializeToString())
    for tag, step, value in scalars:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.write(event_pb2.Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())
    return buffer.getvalue()


def _wall_time(data: bytes) -> float:
    """The wall time of an event file's first record (0 if it cannot be read)."""
    from tensorboard.compat.proto import event_pb2

    try:
        (length,) = struct.unpack("<Q", data[:8])
        return event_pb2.Event.FromString(data[12:12 + length]).wall_time
    except Exception:   # noqa: BLE001  (not ours, or damaged: it is replaced)
        return 0.0
