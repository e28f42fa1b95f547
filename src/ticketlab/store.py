"""Run folders: every file of a run is written here, atomically, and read back only if it checks out.

Layout: `<out>/<experiment>-<hash>/` holds `spec.json` and the run's summary files; each piece of work
(a seed's level and arm, say) is a *unit*, a sub-folder with a `MANIFEST.json` listing the size and
SHA-256 of each of its files. A unit is done when its manifest says so and every file matches: a
truncated, edited or foreign file (a pickle dropped where a checkpoint belongs, say) fails the check and
the unit is recomputed, never used. Checkpoints of a unit in progress live in its `checkpoint/` folder
under their own manifest.

A unit's tensor files are compact (`codec`: masks as packed bits, pruned weights as their nonzero values),
and a file that another unit's file times this unit's mask reproduces bit for bit (a ticket's start
weights: the rewind point times its mask) is stored by reference (`Derived`): its manifest entry names the
source, relative to the unit, with the source's SHA-256, and no file is written. A source that is missing
or changed makes the unit corrupt (recomputed), never silently different.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import spec as specs
from .errors import Fault, UserError
from .io import (CorruptFile, atomic_write_bytes, sha256_bytes, sha256_file, tensors_from_bytes,
                 tensors_to_bytes, to_json, to_json_line)

if TYPE_CHECKING:  # torch only in annotations: `ticketlab show` reads run folders without importing it
    import torch

MANIFEST = "MANIFEST.json"
FORMAT = 1


def encode(name: str, payload: Any) -> bytes:
    """File contents by extension: .safetensors (dict of tensors), .json, .jsonl (list of dicts),
    .csv (list of dicts), anything else bytes or str."""
    if name.endswith(".safetensors"):
        return tensors_to_bytes(payload)
    if name.endswith(".json"):
        return to_json(payload).encode()
    if name.endswith(".jsonl"):
        return "".join(to_json_line(r) + "\n" for r in payload).encode()
    if name.endswith(".csv"):
        return rows_to_csv(payload).encode()
    return payload if isinstance(payload, bytes) else str(payload).encode()


def rows_to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))   # every row's columns, in order of appearance
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([r.get(c, "") for c in columns] for r in rows)   # csv.DictWriter's output, without its per-row checks
    return buf.getvalue()


def csv_rows(text: str) -> list[dict]:
    """csv.DictReader's rows (a short line's missing cells None, a long line's extra cells a list under None),
    built without its per-row overhead."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    width, out = len(header), []
    for line in reader:
        if not line:   # DictReader skips blank lines
            continue
        row = dict(zip(header, line))
        if len(line) != width:
            if len(line) < width:
                row.update(dict.fromkeys(header[len(line):]))
            else:
                row[None] = line[width:]
        out.append(row)
    return out


def decode(name: str, data: bytes, where: str):
    try:
        if name.endswith(".safetensors"):
            return tensors_from_bytes(data, where)
        if name.endswith(".json"):
            return json.loads(data)
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if name.endswith(".csv"):
            return csv_rows(data.decode())
        return data
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFile(f"{where}: unreadable ({e})") from None


@dataclass
class Derived:
    """A tensor file to store by reference: `source`'s file `name` times this unit's mask file `times`
    (pruned entries zeroed, as `Mask.applied` does). `tensors` is what the file must hold: the reference is
    written only if it reproduces them bit for bit, else they are written in full."""

    source: "Unit"
    name: str
    times: str
    tensors: dict


def times_mask(weights: dict, mask: dict) -> dict:
    return {k: (v * mask[k].to(v.dtype) if k in mask else v.clone()) for k, v in weights.items()}


# Sources of references verified in this process, by (path, SHA-256, mtime, size): the units of a seed all
# refer to its one rewind point, which is then read and hashed once (a file changed since misses the key).
_SOURCES: dict[tuple, dict] = {}


_SOURCE_SHAS: dict[tuple, str] = {}


def _source_sha(path: Path) -> str:
    """SHA-256 of a referenced source file, hashed once per process while its size and mtime stay the same
    (every unit of a seed refers to the same rewind point: checking each would hash it again)."""
    st = os.stat(path)
    key = (os.path.normpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    sha = _SOURCE_SHAS.get(key)
    if sha is None:
        if len(_SOURCE_SHAS) >= 64:
            _SOURCE_SHAS.pop(next(iter(_SOURCE_SHAS)))
        sha = _SOURCE_SHAS[key] = sha256_file(path)
    return sha


def _source(path: Path, sha256: str) -> dict:
    """The tensors of the unit file `path`, which its manifest must list with `sha256` (CorruptFile
    otherwise); verified once per process while the file's size and mtime stay the same."""
    try:
        st = path.stat()
    except OSError:
        raise CorruptFile(f"{path}: missing") from None
    key = (str(path), sha256, st.st_mtime_ns, st.st_size)
    tensors = _SOURCES.get(key)
    if tensors is None:
        unit = Unit(path.parent)
        entry = (unit.manifest() or {}).get("files", {}).get(path.name)
        if not isinstance(entry, dict) or entry.get("sha256") != sha256:
            raise CorruptFile(f"{path}: not the file its manifest lists with this hash")
        tensors = unit.read(path.name)
        if len(_SOURCES) >= 8:
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[key] = tensors
    return tensors


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    if "derived" in entry:
        ref = entry["derived"]
        return isinstance(ref, dict) and all(isinstance(ref.get(k), str) for k in ("from", "sha256", "times")) \
            and not os.path.isabs(ref["from"])
    return type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)


class Unit:
    """A folder of files that are written together and trusted only while they match their manifest."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._verified = False

    # -------------------------------------------------------------------------------------- manifest
    def manifest(self) -> dict | None:
        """The manifest, or None when it is missing or malformed (an entry of the wrong type, say): then the
        unit counts as not done and is recomputed."""
        try:
            with open(os.path.join(self.path, MANIFEST), "rb") as f:
                m = json.loads(f.read())
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            return None
        for entry in m["files"].values():
            if not _valid_entry(entry):
                return None
        return m

    def is_done(self) -> bool:
        """Complete and intact. Verified once per process; later calls trust the first check."""
        if self._verified:
            return True
        m = self.manifest()
        if not m or not m.get("complete"):
            return False
        for name, entry in m["files"].items():
            ref = entry.get("derived")
            f = self.path / (ref["from"] if ref else name)
            try:
                if ref is not None:
                    if ref["times"] not in m["files"] or _source_sha(f) != ref["sha256"]:
                        return False
                elif f.stat().st_size != entry["size"] or sha256_file(f) != entry["sha256"]:
                    return False
            except OSError:
                return False
        self._verified = True
        return True

    def commit(self, files: dict[str, Any], *, clear: bool = True) -> None:
        """Write all files (atomically, one by one), then the manifest that marks the unit complete.

        `clear`: first remove the top-level files an earlier attempt left (its manifest included), and the
        `checkpoint/` folder once the manifest is written. Other sub-folders are kept: files a unit streams
        while it trains (LCA's `parameters/`) and units nested below this one."""
        if clear and self.path.is_dir():
            for old in self.path.iterdir():
                if (old.name not in files or isinstance(files[old.name], Derived)) and not old.is_dir():
                    old.unlink(missing_ok=True)
        entries = {}
        for name, payload in files.items():
            if isinstance(payload, Derived):
                ref = self._reference(payload, files)
                if ref is not None:
                    entries[name] = {"derived": ref}
                    continue
                payload = payload.tensors
            data = encode(name, payload)
            atomic_write_bytes(self.path / name, data)
            entries[name] = {"size": len(data), "sha256": sha256_bytes(data)}
        atomic_write_bytes(self.path / MANIFEST, to_json({"format": FORMAT, "complete": True, "files": entries}).encode())
        self._verified = True
        if clear:
            self.clear_checkpoint()

    def write(self, name: str, payload: Any) -> None:
        """Add or replace one file of an open-ended unit (the run's summary files)."""
        data = encode(name, payload)
        atomic_write_bytes(self.path / name, data)
        m = self.manifest() or {"format": FORMAT, "complete": False, "files": {}}
        m["files"][name] = {"size": len(data), "sha256": sha256_bytes(data)}
        atomic_write_bytes(self.path / MANIFEST, to_json(m).encode())

    def read(self, name: str, manifest: dict | None = None):
        """A file's decoded contents; CorruptFile unless it matches the manifest (`manifest`: the one the caller
        has just read, not read again)."""
        m = manifest if manifest is not None else self.manifest()
        where = os.path.join(self.path, name)
        entry = m["files"].get(name) if m else None
        if entry is None:
            raise CorruptFile(f"{where}: not listed in {MANIFEST}")
        if "derived" in entry:
            return self._read_derived(where, entry["derived"])
        try:
            with open(where, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CorruptFile(f"{where}: cannot read ({e.strerror})") from None
        if len(data) != entry["size"] or sha256_bytes(data) != entry["sha256"]:
            raise CorruptFile(f"{where}: size or SHA-256 differs from {MANIFEST} (truncated or changed)")
        return decode(name, data, where)

    def _reference(self, d: Derived, files: dict) -> dict | None:
        """The manifest entry of `d` by reference, or None when the reference would not give `d.tensors`."""
        from .codec import identical

        mask = files.get(d.times)
        try:
            sha = d.source.manifest()["files"][d.name]["sha256"]
            source = _source(d.source.path / d.name, sha)
        except (CorruptFile, KeyError, TypeError):
            return None
        if not isinstance(mask, dict):
            return None
        made = times_mask(source, mask)
        if made.keys() != d.tensors.keys() or not all(identical(made[k], d.tensors[k]) for k in made):
            return None
        return {"from": os.path.relpath(d.source.path / d.name, self.path), "sha256": sha, "times": d.times}

    def _read_derived(self, where: str, ref: dict) -> dict:
        path = Path(os.path.normpath(self.path / ref["from"]))
        try:
            tensors = _source(path, ref["sha256"])
        except CorruptFile:
            raise CorruptFile(f"{where}: its source {path} is missing or changed since it was written") from None
        return times_mask(tensors, self.read(ref["times"]))

    def unit(self, *parts: str) -> "Unit":
        return Unit(self.path.joinpath(*parts))

    def remove(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        self._verified = False

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Keep the newest checkpoint of work in progress; a kill while saving leaves the previous one."""
        step = int(state["step"])
        ck = self.path / "checkpoint"
        names = {"tensors": f"state-{step}.safetensors", "state": f"state-{step}.json"}
        blobs = {names["tensors"]: tensors_to_bytes(tensors), names["state"]: to_json(state).encode()}
        for name, data in blobs.items():
            atomic_write_bytes(ck / name, data)
        entries = {n: {"size": len(d), "sha256": sha256_bytes(d)} for n, d in blobs.items()}
        atomic_write_bytes(ck / MANIFEST, to_json({"format": FORMAT, "complete": True, "step": step,
                                                   "names": names, "files": entries}).encode())
        for old in ck.iterdir():
            if old.name not in blobs and old.name != MANIFEST:
                old.unlink(missing_ok=True)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The newest intact checkpoint, or None (also when it is corrupt: then work restarts)."""
        ck = self.unit("checkpoint")
        m = ck.manifest()
        if not m or "names" not in m:
            return None
        try:
            return ck.read(m["names"]["tensors"]), ck.read(m["names"]["state"])
        except (CorruptFile, KeyError, TypeError):
            return None

    def clear_checkpoint(self) -> None:
        shutil.rmtree(self.path / "checkpoint", ignore_errors=True)


class Run(Unit):
    """A run folder: `spec.json`, summary files, and units of work below it."""

    def __init__(self, path: Path, spec):
        super().__init__(path)
        self.spec = spec

    @staticmethod
    def folder(out: str | os.PathLike, spec) -> Path:
        """The run folder of `spec` under `out`: `<out>/<experiment>-<hash>`."""
        return Path(out) / f"{spec.experiment}-{specs.spec_hash(spec)}"

    @classmethod
    def open(cls, out: str | os.PathLike, spec, *, force: bool = False) -> "Run":
        """Create or reopen `<out>/<experiment>-<hash>/`. `force` discards what an earlier run left."""
        path = cls.folder(out, spec)
        if force and path.exists():
            trash = path.with_name(f".{path.name}.discarded-{os.getpid()}")
            os.replace(path, trash)  # one atomic step: a kill during the delete leaves no half-run
            try:
                shutil.rmtree(trash)
            except OSError as e:
                raise Fault(f"{trash}: cannot delete the discarded run folder ({e.strerror or e} at {e.filename}); "
                            f"make it writable (chmod -R u+w) and delete it, then run the same command again") from None
        run = cls(path, spec)
        record = {"experiment": spec.experiment, "hash": specs.spec_hash(spec),
                  "non_default": specs.non_default(spec), "spec": specs.to_dict(spec)}
        try:
            existing = run.read("spec.json")
        except CorruptFile:
            existing = None
        if existing is not None:
            changed = _changed_settings(existing.get("spec", {}), record["spec"], spec)
            if changed:
                raise UserError(f"{path} was made with other values of {', '.join(changed)} (defaults changed since?); "
                                f"use --force to recompute or another --out")
        if existing != record:
            path.mkdir(parents=True, exist_ok=True)
            run.write("spec.json", record)
        return run


def _changed_settings(old: dict, new: dict, spec) -> list[str]:
    """Hashed settings that both specs record with different values: the folder name only covers
    non-default settings, so a changed default would otherwise reuse results made under the old one."""
    hashed = {s.name for s in specs.settings_of(type(spec)) if s.hashed}
    flat_old = {k: v for group in old.values() if isinstance(group, dict) for k, v in group.items()}
    flat_new = {k: v for group in new.values() for k, v in group.items()}
    return sorted(k for k in hashed if k in flat_old and k in flat_new and flat_old[k] != flat_new[k])


def open_existing(path: str | os.PathLike) -> Unit:
    """A finished or unfinished run folder given by a user (for `ticketlab show`)."""
    path = Path(path)
    if not (path / "spec.json").is_file():
        raise UserError(f"{path} is not a ticketlab run folder (no spec.json); expected e.g. runs/lottery-<hash>")
    return Unit(path)
