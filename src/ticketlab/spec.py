"""Experiment specs: frozen dataclasses whose every setting is declared once.

A setting is a dataclass field made with `setting(default, help, kind)`. From that one declaration come
its command-line flag (`--prune-fraction`), its TOML key (`prune_fraction`, flat or under its group's
table, e.g. `[prune]`), its help text, its validation (the `Kind`), and its place in the run folder's
hash. Settings at their default are left out of the hash, so adding a setting whose default changes
nothing keeps old run folders valid (OpenLTH's rule). Settings marked `hashed=False` (where files live,
which device, which seeds to run) never enter the hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import names, steps
from .errors import UserError, unknown_name


# ----------------------------------------------------------------------------------------------- kinds
class Kind:
    """How a setting's value is parsed from text, coerced from TOML/Python and validated."""

    metavar = "VALUE"

    def parse(self, text: str):
        return self.coerce(text)

    def coerce(self, value):
        raise NotImplementedError

    def to_json(self, value):
        return list(value) if isinstance(value, tuple) else value


class Int(Kind):
    metavar = "N"

    def __init__(self, minimum: int | None = None):
        self.minimum = minimum

    def coerce(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            v = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if self.minimum is not None and v < self.minimum:
            raise ValueError(f"must be >= {self.minimum}, got {v}")
        return v


class Float(Kind):
    metavar = "X"

    def __init__(self, low=None, high=None, *, low_open=False, high_open=False, optional=False):
        self.low, self.high, self.low_open, self.high_open, self.optional = low, high, low_open, high_open, optional

    def coerce(self, value):
        if self.optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none"))):
            return None
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {value!r}")
        bad_low = self.low is not None and (v <= self.low if self.low_open else v < self.low)
        bad_high = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        if bad_low or bad_high:
            raise ValueError(f"must be in {self.interval()}, got {v:g}")
        return v

    def interval(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return ("(" if self.low_open or self.low is None else "[") + f"{lo}, {hi}" + (")" if self.high_open or self.high is None else "]")


class Bool(Kind):
    metavar = "BOOL"

    def coerce(self, value):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")


class Text(Kind):
    metavar = "TEXT"

    def coerce(self, value):
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value


class Choice(Kind):
    """One name out of a registry; `names` is a callable so registries can be filled lazily."""

    metavar = "NAME"

    def __init__(self, what: str, names: Callable[[], Iterable[str]]):
        self.what, self.names = what, names

    def coerce(self, value):
        valid = tuple(self.names())
        if value not in valid:
            raise unknown_name(self.what, str(value), valid)
        return value


class Step(Kind):
    metavar = "STEP"

    def __init__(self, optional: bool = False):
        self.optional = optional

    def coerce(self, value):
        if self.optional and (value is None or value == "" or str(value).lower() == "none"):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value}it"
        if not isinstance(value, str):
            raise ValueError(f"expected {steps.FORMS}, got {value!r}")
        try:
            return steps.check(value)
        except UserError as e:
            raise ValueError(str(e)) from None


class ListOf(Kind):
    """A comma-separated list on the command line, a list in TOML, a tuple in the spec."""

    def __init__(self, item: Kind, *, nonempty: bool = True, unique: bool = False):
        self.item, self.nonempty, self.unique = item, nonempty, unique
        self.metavar = f"{item.metavar},..."

    def parse(self, text: str):
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not self.nonempty and parts in ([], ["none"]):
            return ()
        return self.coerce([self.item.parse(p) for p in parts])

    def coerce(self, value):
        if isinstance(value, str):
            return self.parse(value)
        if value is None:
            value = ()
        if not isinstance(value, (list, tuple)):
            value = (value,)
        items = tuple(self.item.coerce(v) for v in value)
        if self.nonempty and not items:
            raise ValueError("must not be empty")
        if self.unique and len(set(items)) != len(items):
            raise ValueError(f"has repeated entries: {', '.join(map(str, items))}")
        return items


class Optional(Kind):
    """`none` (or an empty value) means unset; otherwise the inner kind."""

    def __init__(self, inner: Kind):
        self.inner = inner
        self.metavar = inner.metavar

    def parse(self, text: str):
        return None if str(text).strip().lower() in ("", "none") else self.inner.parse(text)

    def coerce(self, value):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return self.inner.coerce(value)


class Rates(Kind):
    """Per-layer prune fractions: `fc1.weight=0.2,fc3.weight=0.1` (a TOML table works too)."""

    metavar = "LAYER=F,..."

    def parse(self, text: str):
        pairs = []
        for part in (p.strip() for p in str(text).split(",") if p.strip()):
            name, eq, frac = part.partition("=")
            if not eq:
                raise ValueError(f"expected LAYER=FRACTION, got {part!r}")
            pairs.append((name.strip(), frac))
        return self.coerce(dict(pairs))

    def coerce(self, value):
        if isinstance(value, str):
            return self.parse(value)
        items = value.items() if isinstance(value, dict) else value
        frac = Float(0.0, 1.0, high_open=True)
        out = tuple(sorted((str(k), frac.coerce(v)) for k, v in items))
        return out

    def to_json(self, value):
        return dict(value)


# -------------------------------------------------------------------------------------------- settings
def setting(default, help: str, kind: Kind, *, hashed: bool = True, flag: str | None = None):
    """Declare one setting. `flag` overrides the derived `--name-with-dashes`."""
    return field(default=default, metadata={"help": help, "kind": kind, "hashed": hashed, "flag": flag})


@dataclass(frozen=True)
class Setting:
    group: str
    name: str
    default: Any
    help: str
    kind: Kind
    hashed: bool
    flag: str

    def coerce(self, value, source: str):
        try:
            return self.kind.coerce(value)
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None

    def parse(self, text: str, source: str):
        try:
            return self.kind.parse(text)
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None


def settings_of(spec_cls) -> list[Setting]:
    """Every setting of a (grouped) spec class: its fields are groups, whose fields are settings."""
    out = []
    for group in dataclasses.fields(spec_cls):
        for f in dataclasses.fields(group.default_factory if group.default_factory is not dataclasses.MISSING else group.type):
            md = f.metadata
            out.append(Setting(group.name, f.name, f.default, md["help"], md["kind"], md["hashed"],
                               md["flag"] or "--" + f.name.replace("_", "-")))
    return out


def group_classes(spec_cls) -> dict[str, type]:
    return {g.name: g.default_factory for g in dataclasses.fields(spec_cls)}


def build(spec_cls, values: dict[str, Any]):
    """A spec from flat `{setting_name: canonical_value}`; missing settings keep their defaults."""
    groups = {}
    by_group: dict[str, dict] = {}
    for s in settings_of(spec_cls):
        if s.name in values:
            by_group.setdefault(s.group, {})[s.name] = values[s.name]
    for name, cls in group_classes(spec_cls).items():
        groups[name] = cls(**by_group.get(name, {}))
    spec = spec_cls(**groups)
    check = getattr(spec, "validate", None)
    if check:
        check()
    return spec


def from_mapping(spec_cls, mapping: dict, source: str = "spec"):
    """Flat or grouped dict (TOML, JSON, Python keywords) -> spec. Unknown keys are refused by name."""
    table = {s.name: s for s in settings_of(spec_cls)}
    groups = group_classes(spec_cls)
    values = {}

    def take(key, value, where):
        name = key.replace("-", "_")
        if name not in table:
            raise UserError(f"{where}: unknown setting {key!r}; valid: {', '.join(sorted(table))}")
        values[name] = table[name].coerce(value, f"{where}: {name}")

    for key, value in mapping.items():
        if key in groups and isinstance(value, dict):
            for k, v in value.items():
                take(k, v, f"{source} [{key}]")
        else:
            take(key, value, source)
    return build(spec_cls, values)


def from_toml(spec_cls, path: str | Path, overrides: dict | None = None):
    path = Path(path)
    try:
        mapping = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist (expected a TOML file of settings)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    mapping.pop("experiment", None)
    spec = from_mapping(spec_cls, mapping, str(path))
    return replace(spec, **(overrides or {})) if overrides else spec


def replace(spec, **values):
    """A copy of `spec` with some settings changed by flat name (validated)."""
    current = flat_values(spec)
    table = {s.name: s for s in settings_of(type(spec))}
    for name, value in values.items():
        if name not in table:
            raise UserError(f"unknown setting {name!r}; valid: {', '.join(sorted(table))}")
        current[name] = table[name].coerce(value, name)
    return build(type(spec), current)


def flat_values(spec) -> dict[str, Any]:
    return {s.name: getattr(getattr(spec, s.group), s.name) for s in settings_of(type(spec))}


def to_dict(spec) -> dict[str, dict[str, Any]]:
    """Grouped, JSON-ready: `{"train": {"lr": 0.01, ...}, ...}`."""
    out: dict[str, dict] = {}
    for s in settings_of(type(spec)):
        out.setdefault(s.group, {})[s.name] = s.kind.to_json(getattr(getattr(spec, s.group), s.name))
    return out


def non_default(spec, hashed_only: bool = True) -> dict[str, Any]:
    return {s.name: s.kind.to_json(getattr(getattr(spec, s.group), s.name))
            for s in settings_of(type(spec))
            if (s.hashed or not hashed_only) and getattr(getattr(spec, s.group), s.name) != s.default}


def spec_hash(spec) -> str:
    """Stable 10-hex-digit hash of the experiment name and its non-default hashed settings."""
    payload = json.dumps({"experiment": spec.experiment, **non_default(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, spec_cls) -> None:
    """One flag per setting, grouped as in the spec; defaults shown in the help."""
    for name, cls in group_classes(spec_cls).items():
        group = parser.add_argument_group(f"{name} settings", (cls.__doc__ or "").strip().splitlines()[0] or None)
        for s in settings_of(spec_cls):
            if s.group != name:
                continue
            default = s.kind.to_json(s.default)
            if isinstance(default, list):
                default = ",".join(map(str, default)) or "none"
            group.add_argument(s.flag, dest=s.name, metavar=s.kind.metavar, default=argparse.SUPPRESS,
                               help=f"{s.help} (default: {default if default is not None else 'none'})")


def from_arguments(spec_cls, namespace: argparse.Namespace, config: str | None = None):
    """Spec from parsed flags, on top of a TOML file if one is given (flags win)."""
    table = {s.name: s for s in settings_of(spec_cls)}
    given = {name: table[name].parse(text, table[name].flag)
             for name, text in vars(namespace).items() if name in table}
    if config:
        return from_toml(spec_cls, config, given)
    return build(spec_cls, given)


# ------------------------------------------------------------------------------ groups shared by experiments
# The registries' names come from `names` (torch-free), so parsing and validating a spec never loads torch.
def _datasets():
    return names.DATASETS


def _models():
    return names.MODELS


def _inits():
    return names.INITS


def _criteria():
    return names.CRITERIA


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "milestones", "cosine")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class DataSpec:
    """Which data and how it is changed before training."""

    dataset: str = setting("mnist1d", "data set", Choice("dataset", _datasets))
    data_dir: str = setting("data", "folder holding data files (MNIST-1D is generated and cached here)", Text(), hashed=False)
    subsample: float = setting(1.0, "fraction of the training set kept (seeded by --data-seed)", Float(0, 1, low_open=True))
    random_labels: float = setting(0.0, "fraction of training labels replaced by uniformly random ones", Float(0, 1))
    data_seed: int = setting(0, "seed of subsampling and label randomisation", Int(0))
    mnist1d_seed: int = setting(42, "seed given to the MNIST-1D generator (42 = the published set)", Int(0))
    augment: bool = setting(True, "use the data set's train-time augmentation (CIFAR-10: crop pad 4 + flip)", Bool())


@dataclass(frozen=True)
class ModelSpec:
    """The network and its initialisation."""

    model: str = setting("mnist1d_mlp", "architecture", Choice("model", _models))
    widths: tuple | None = setting(None, "hidden widths of mlp / mnist1d_mlp, e.g. 300,100", Optional(ListOf(Int(1))))
    init: str = setting("kaiming_normal", "weight initialisation", Choice("init", _inits))


@dataclass(frozen=True)
class TrainSpec:
    """How one network is trained."""

    steps: str = setting("1500it", "training length: 500it, 50ep, 1ep50it", Step())
    batch_size: int = setting(100, "minibatch size", Int(1))
    optimizer: str = setting("adam", f"optimizer: {', '.join(OPTIMIZERS)}", Choice("optimizer", lambda: OPTIMIZERS))
    lr: float = setting(5e-3, "learning rate", Float(0, None, low_open=True))
    momentum: float = setting(0.9, "SGD momentum", Float(0, 1, high_open=True))
    nesterov: bool = setting(False, "SGD with Nesterov momentum", Bool())
    weight_decay: float = setting(0.0, "L2 weight decay", Float(0))
    schedule: str = setting("constant", f"learning-rate schedule: {', '.join(SCHEDULES)}", Choice("schedule", lambda: SCHEDULES))
    milestones: tuple = setting((), "steps where the milestones schedule multiplies the rate by --gamma, e.g. 80ep,120ep", ListOf(Step(), nonempty=False))
    gamma: float = setting(0.1, "factor of the milestones schedule", Float(0, 1, low_open=True))
    warmup: str = setting("0it", "linear learning-rate warmup length", Step())
    eval_every: str = setting("1ep", "evaluate on the test set this often (and at the end)", Step())
    eval_batch_size: int = setting(10000, "batch size of evaluation", Int(1), hashed=False)
    checkpoint_every: str = setting("0it", "save a resumable checkpoint this often (0it: at every evaluation)", Step(), hashed=False)
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:1, mps", Text(), hashed=False)
    threads: int = setting(0, "torch intra-op threads per process (0: one; cores are used by --workers)", Int(0), hashed=False)
    workers: int = setting(0, "worker processes for independent trainings (0: automatic; 1: this process only)", Int(0), hashed=False)
    max_batch: int = setting(0, "models stacked into one per step (0: automatic; 1: no stacking)", Int(0), hashed=False)
    executor: str = setting("local", "where units run: local (worker processes on this machine) or ray (a Ray cluster; "
                            "--out must be a folder every node sees)", Choice("executor", lambda: EXECUTORS), hashed=False)
    ray_address: str = setting("", "address of a running Ray cluster for --executor ray (empty: start a local Ray instance)",
                               Text(), hashed=False)


@dataclass(frozen=True)
class PruneSpec:
    """How masks are chosen at each pruning level."""

    prune_fraction: float = setting(0.2, "fraction of the remaining weights pruned per level", Float(0, 1, low_open=True, high_open=True))
    output_prune_fraction: float = setting(0.1, "the output layer's own fraction per level (0: never pruned)", Float(0, 1, high_open=True))
    layer_prune_fractions: tuple = setting((), "per-layer fractions overriding the two above, e.g. fc1.weight=0.3", Rates())
    prune_scope: str = setting("layerwise", "layerwise (each layer its fraction) or global (one threshold over the layers sharing --prune-fraction)",
                               Choice("prune scope", lambda: ("layerwise", "global")))
    criterion: str = setting("large_final", "mask criterion (score; higher is kept)", Choice("criterion", _criteria))
