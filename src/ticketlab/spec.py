"""Experiment specs: frozen dataclasses whose every setting is declared once.

A setting is a dataclass field made with `setting(default, help, kind)`. From that one declaration come
its command-line flag (`--prune-fraction`), its TOML key (`prune_fraction`, flat or under its group's
table, e.g. `[prune]`), its help text, its validation (the `Kind`), and its place in the run folder's
hash. Settings at their default are left out of the hash, so adding a setting whose default changes
nothing keeps old run folders valid (OpenLTH's rule). Settings marked `hashed=False` (where files live,
which device, which seeds to run) never enter the hash.

Values come from three places: command-line text (`Kind.parse`: `--levels 3`, `--seeds 0,1`), TOML files
(`Kind.from_file`: strict, the TOML type must be the setting's, so `levels = "2"` is refused; a config
or sweep file is read with a size cap, `MAX_FILE_BYTES`) and Python (`Kind.coerce`, lenient). Every
count is bounded by what can run (`SEED_LIMIT`, `COUNT_LIMIT`, `LEVEL_LIMIT`, `steps.MAX_ITERATIONS`).
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

INT_LIMIT = 2**63 - 1    # every integer setting fits a signed 64-bit integer (what torch takes)
SEED_LIMIT = 2**32       # seeds are < 2**32: the range of numpy's generator (MNIST-1D); torch takes them too
COUNT_LIMIT = 1024       # threads, worker processes, stacked models
LEVEL_LIMIT = 10_000     # pruning levels (each experiment also checks that every layer keeps a weight)
MAX_FILE_BYTES = 1 << 20  # a config or sweep file lists settings: 1 MiB is plenty


# ----------------------------------------------------------------------------------------------- kinds
class Kind:
    """How a setting's value is parsed from text, coerced from TOML/Python and validated."""

    metavar = "VALUE"

    def parse(self, text: str):
        return self.coerce(text)

    def coerce(self, value):
        raise NotImplementedError

    def from_file(self, value):
        """A value read from a TOML file: strict, its TOML type must be the setting's (text is for flags)."""
        return self.coerce(value)

    def to_json(self, value):
        return list(value) if isinstance(value, tuple) else value


def _quoted(value) -> str:
    return " (TOML has types: write the value without quotes)" if isinstance(value, str) else ""


class Int(Kind):
    metavar = "N"

    def __init__(self, minimum: int | None = None, maximum: int = INT_LIMIT, why: str = ""):
        self.minimum, self.maximum, self.why = minimum, maximum, why

    def coerce(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            v = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if self.minimum is not None and v < self.minimum:
            raise ValueError(f"must be >= {self.minimum}, got {v}")
        if v > self.maximum:
            raise ValueError(f"must be <= {self.maximum}{self.why}, got {v}")
        return v

    def from_file(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}{_quoted(value)}")
        return self.coerce(value)


def Seed() -> Int:
    """A seed: an integer in [0, 2**32)."""
    return Int(0, SEED_LIMIT - 1, f" (seeds are < 2**32 = {SEED_LIMIT})")


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
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {value!r}")
        bad_low = self.low is not None and (v <= self.low if self.low_open else v < self.low)
        bad_high = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        if bad_low or bad_high:
            raise ValueError(f"must be in {self.interval()}, got {v:g}")
        return v

    def from_file(self, value):
        if self.optional and isinstance(value, str) and value.lower() in ("", "none"):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}{_quoted(value)}")
        return self.coerce(value)

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

    def from_file(self, value):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}{_quoted(value)}")
        return value


class Text(Kind):
    metavar = "TEXT"

    def coerce(self, value):
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value


class Folder(Text):
    metavar = "DIR"


class Choice(Kind):
    """One name out of a registry; `names` is a callable so registries can be filled lazily."""

    metavar = "NAME"

    def __init__(self, what: str, names: Callable[[], Iterable[str]]):
        self.what, self.names = what, names

    def coerce(self, value):
        valid = tuple(self.names())
        if not isinstance(value, str) or value not in valid:
            raise unknown_name(self.what, str(value), valid)
        return value

    def from_file(self, value):
        if not isinstance(value, str):
            raise ValueError(f"expected a {self.what} name in quotes, got {value!r}")
        return self.coerce(value)


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
        return self._checked(tuple(self.item.coerce(v) for v in value))

    def from_file(self, value):
        if not isinstance(value, list):
            raise ValueError(f"expected a list (a TOML array such as [{'0, 1' if isinstance(self.item, Int) else '...'}]), got {value!r}")
        return self._checked(tuple(self.item.from_file(v) for v in value))

    def _checked(self, items: tuple) -> tuple:
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

    def from_file(self, value):   # TOML has no null: "none" says unset
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return self.inner.from_file(value)


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
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            items = list(value)
        else:
            raise ValueError(f"expected LAYER=FRACTION pairs (in TOML a table such as {{ \"fc1.weight\" = 0.3 }}), got {value!r}")
        frac = Float(0.0, 1.0, high_open=True)
        return tuple(sorted((str(k), frac.coerce(v)) for k, v in items))

    def from_file(self, value):
        if not isinstance(value, dict):
            raise ValueError(f"expected a table of LAYER = FRACTION, e.g. {{ \"fc1.weight\" = 0.3 }}, got {value!r}")
        frac = Float(0.0, 1.0, high_open=True)
        return tuple(sorted((k, frac.from_file(v)) for k, v in value.items()))

    def to_json(self, value):
        return dict(value)


# -------------------------------------------------------------------------------------------- settings
def setting(default, help: str, kind: Kind, *, hashed: bool = True, flag: str | None = None, aliases: tuple = ()):
    """Declare one setting. `flag` overrides the derived `--name-with-dashes`; `aliases`: further flags of it
    (`--density` for `--densities`)."""
    return field(default=default, metadata={"help": help, "kind": kind, "hashed": hashed, "flag": flag, "aliases": aliases})


@dataclass(frozen=True)
class Setting:
    group: str
    name: str
    default: Any
    help: str
    kind: Kind
    hashed: bool
    flag: str
    aliases: tuple = ()

    def coerce(self, value, source: str, strict: bool = False):
        """`value` checked and made canonical; `strict`: it was read from a TOML file (`Kind.from_file`)."""
        try:
            return self.kind.from_file(value) if strict else self.kind.coerce(value)
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
                               md["flag"] or "--" + f.name.replace("_", "-"), tuple(md.get("aliases", ()))))
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
    train = getattr(spec, "train", None)
    if isinstance(train, TrainSpec):
        train.check()
    data = getattr(spec, "data", None)
    if isinstance(data, DataSpec):
        data.check()
    check = getattr(spec, "validate", None)
    if check:
        check()
    return spec


def preset_values(spec_cls, name: str) -> dict[str, Any]:
    """The canonical `{setting: value}` that preset `name` (`ticketlab.presets`) gives this experiment."""
    from . import presets

    out = {}
    table = {s.name: s for s in settings_of(spec_cls)}
    for key, value in presets.values(name, spec_cls.experiment).items():
        if key not in table:   # a fault of the presets table: tests/test_presets.py builds every one
            raise UserError(f"preset {name!r}: {key} is not a setting of {spec_cls.experiment}")
        out[key] = table[key].coerce(value, f"preset {name}: {key}")
    return out


def from_mapping(spec_cls, mapping: dict, source: str = "spec", strict: bool = False, preset: str | None = None):
    """Flat or grouped dict (TOML, JSON, Python keywords) -> spec. Unknown keys are refused by name, and so
    are a setting given twice (flat and under its table) and a setting under another group's table.
    `strict`: the values were read from a TOML file, so their types must be the settings' own
    (`Kind.from_file`: `levels = "2"` is refused).

    A top-level `preset = "NAME"` (or the `preset` argument, which replaces it: a `--preset` flag) applies
    that preset's settings first; the mapping's own settings override them. The preset itself is not kept:
    the spec (and its hash) is the settings it ends with."""
    table = {s.name: s for s in settings_of(spec_cls)}
    groups = group_classes(spec_cls)
    values, where_given = {}, {}
    if "preset" in mapping:
        mapping = dict(mapping)
        named = mapping.pop("preset")
        if not isinstance(named, str):
            raise UserError(f"{source}: preset must be a preset name in quotes, got {named!r}")
        preset = preset if preset is not None else named

    def take(key, value, where, group=None):
        name = str(key).replace("-", "_")
        if name not in table:
            raise UserError(f"{where}: unknown setting {key!r}; valid: {', '.join(sorted(table))}")
        if group is not None and table[name].group != group:
            raise UserError(f"{where}: {name} is not a [{group}] setting; put it under [{table[name].group}] (or at the top)")
        place = "at the top" if group is None else f"under [{group}]"
        if name in values:
            raise UserError(f"{source}: {name} is given twice, {where_given[name]} and {place}; give it once")
        values[name] = table[name].coerce(value, f"{where}: {name}", strict)
        where_given[name] = place

    for key, value in mapping.items():
        if key in groups and isinstance(value, dict):
            for k, v in value.items():
                take(k, v, f"{source} [{key}]", key)
        elif isinstance(value, dict) and str(key).replace("-", "_") not in table:
            raise UserError(f"{source}: unknown table [{key}]; valid tables: {', '.join(groups)}")
        else:
            take(key, value, source)
    if preset is not None:
        values = {**preset_values(spec_cls, preset), **values}
    return build(spec_cls, values)


def read_toml(path: str | Path, what: str = "config file", hint: str = "a TOML file of settings") -> dict:
    """A TOML file's contents, read with a size cap (`MAX_FILE_BYTES`); every failure is one UserError line."""
    if str(path).strip() == "":
        raise UserError(f"{what}: the file name is empty (expected {hint})")
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{what} {path} is a directory (expected {hint})")
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist (expected {hint})") from None
    except OSError as e:
        raise UserError(f"{what} {path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB, the limit of a settings file (expected {hint})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid TOML (not UTF-8 text: byte {e.start} is {data[e.start:e.start + 1]!r})") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise UserError(f"{path}: not valid TOML (nested too deeply)") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def from_toml(spec_cls, path: str | Path, overrides: dict | None = None, preset: str | None = None):
    """Spec from a TOML config file (flat or grouped settings, strictly typed), then `overrides`. The file
    may name its experiment (`experiment = "lottery"`); naming another one is refused. The file's
    `preset = "NAME"` (or `preset`, which replaces it) applies under the file's settings."""
    mapping = read_toml(path)
    if "experiment" in mapping:
        named = mapping.pop("experiment")
        if named != spec_cls.experiment:
            raise UserError(f"{path}: experiment = {named!r}, but this command runs {spec_cls.experiment!r}; "
                            f"use that experiment's command, or remove the line")
    spec = from_mapping(spec_cls, mapping, str(path), strict=True, preset=preset)
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
    payload = {"experiment": spec.experiment, **non_default(spec)}
    train = getattr(spec, "train", None)
    if getattr(train, "optimizer", None) in FOP_OPTIMIZERS:
        # always named: folders of the first FOP (input-side matrices for linear layers, no such setting) must
        # not be taken for runs of today's default
        payload["fop_linear"] = train.fop_linear
    payload = json.dumps(payload, sort_keys=True)
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
            group.add_argument(s.flag, *s.aliases, dest=s.name, metavar=s.kind.metavar, default=argparse.SUPPRESS,
                               help=f"{s.help} (default: {default if default not in (None, '') else 'none'})")


def from_arguments(spec_cls, namespace: argparse.Namespace, config: str | None = None):
    """Spec from parsed flags, on top of a TOML file if one is given, on top of a preset if one is named
    (`--preset`, else the file's `preset = ...`): preset < file < flags."""
    table = {s.name: s for s in settings_of(spec_cls)}
    given = {name: table[name].parse(text, table[name].flag)
             for name, text in vars(namespace).items() if name in table}
    preset = getattr(namespace, "preset", None)
    if config is not None:
        return from_toml(spec_cls, config, given, preset=preset)
    if preset is not None:
        given = {**preset_values(spec_cls, preset), **given}
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


OPTIMIZERS = ("sgd", "adam", "fop-sgd", "fop-adam")
FOP_OPTIMIZERS = ("fop-sgd", "fop-adam")   # train alone: never stacked (train/fop.py)
FOP_LINEAR = ("scalar", "input", "none")   # how train/fop.py preconditions a linear layer
SCHEDULES = ("constant", "milestones", "cosine", "one-cycle")
EXECUTORS = ("local", "ray")
TENSORBOARD_HELP = ("also write TensorBoard event files under DIR: every unit's training curves and the per-level "
                    "accuracy and weights remaining of each arm (pip install 'ticketlab[tensorboard]'; empty: none). "
                    "An output option: the run folder does not depend on it")


@dataclass(frozen=True)
class DataSpec:
    """Which data and how it is changed before training."""

    dataset: str = setting("mnist1d", "data set", Choice("dataset", _datasets))
    data_dir: str = setting("data", "folder holding data files (MNIST-1D is generated and cached here; for --dataset folder: "
                            "DIR/train/<class>/ and DIR/test/<class>/ image folders)", Text(), hashed=False)
    subsample: float = setting(1.0, "fraction of the training set kept (seeded by --data-seed)", Float(0, 1, low_open=True))
    random_labels: float = setting(0.0, "fraction of training labels replaced by uniformly random ones", Float(0, 1))
    data_seed: int = setting(0, "seed of subsampling and label randomisation (< 2**32)", Seed())
    mnist1d_seed: int = setting(42, "seed given to the MNIST-1D generator (42 = the published set; < 2**32)", Seed())
    augment: bool = setting(True, "use the data set's train-time augmentation (CIFAR-10: crop pad 4 + flip; folder: "
                            "random-resized crop + flip)", Bool())
    image_size: int = setting(224, "side in pixels of --dataset folder images (shorter side resized to it, then centre-cropped "
                              "to a square)", Int(1, 4096))

    def check(self) -> None:
        """What is wrong whatever the data files: checked with every spec (`build`)."""
        if self.image_size != 224 and self.dataset != "folder":
            raise UserError(f"--image-size applies to --dataset folder only (got --dataset {self.dataset}, whose images "
                            f"have a fixed size)")


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
    optimizer: str = setting("adam", f"optimizer: {', '.join(OPTIMIZERS)} (fop-*: first-order preconditioning, Moskovitz et "
                             "al. 2019, on top of SGD / Adam; its units train alone, never stacked)",
                             Choice("optimizer", lambda: OPTIMIZERS))
    fop_lr: float = setting(1e-3, "fop-sgd / fop-adam: learning rate of the preconditioners' hypergradient descent "
                            "(0: frozen identity, the base optimizer exactly)", Float(0))
    fop_linear: str = setting("scalar", "fop-sgd / fop-adam: the preconditioner of a linear layer: scalar (a 1 x 1 matrix, as "
                              "for a convolution with a 1-position kernel: a learned scale of the layer's step), input (an "
                              "in x in matrix on the input side; costly: 784 x 784 in LeNet-300-100) or none; a "
                              "convolution always gets a k x k matrix over its kernel's positions",
                              Choice("FOP linear-layer preconditioner", lambda: FOP_LINEAR))
    lr: float = setting(5e-3, "learning rate", Float(0, None, low_open=True))
    momentum: float = setting(0.9, "SGD momentum", Float(0, 1, high_open=True))
    nesterov: bool = setting(False, "SGD with Nesterov momentum", Bool())
    weight_decay: float = setting(0.0, "L2 weight decay", Float(0))
    label_smoothing: float = setting(0.0, "label smoothing of the training loss (Szegedy et al. 2016), in [0, 1); the "
                                     "reported test loss is plain cross-entropy", Float(0, 1, high_open=True))
    schedule: str = setting("constant", f"learning-rate schedule: {', '.join(SCHEDULES)}", Choice("schedule", lambda: SCHEDULES))
    milestones: tuple = setting((), "steps where the milestones schedule multiplies the rate by --gamma, e.g. 80ep,120ep", ListOf(Step(), nonempty=False))
    gamma: float = setting(0.1, "factor of the milestones schedule", Float(0, 1, low_open=True))
    pct_start: float = setting(0.3, "one-cycle: fraction of training spent warming up from lr/--div-factor to --lr",
                               Float(0, 1, low_open=True, high_open=True))
    div_factor: float = setting(25.0, "one-cycle: the first rate is --lr divided by this", Float(1))
    final_div: float = setting(1e4, "one-cycle: the last rate is --lr divided by this (cosine annealing down to it)", Float(1))
    warmup: str = setting("0it", "linear learning-rate warmup length", Step())
    eval_every: str = setting("1ep", "evaluate on the test set this often, at least 1it (and at the end)", Step())
    eval_batch_size: int = setting(10000, "batch size of evaluation", Int(1), hashed=False)
    checkpoint_every: str = setting("0it", "save a resumable checkpoint this often (0it: at the first evaluation after every "
                                    "10 s of training, so trainings shorter than 10 s write none)", Step(), hashed=False)
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:1, mps", Text(), hashed=False)
    threads: int = setting(0, "torch intra-op threads per process (0: one; cores are used by --workers)", Int(0, COUNT_LIMIT), hashed=False)
    workers: int = setting(0, "worker processes for independent trainings (0: automatic; 1: this process only)", Int(0, COUNT_LIMIT), hashed=False)
    max_batch: int = setting(0, "models stacked into one per step (0: automatic; 1: no stacking)", Int(0, COUNT_LIMIT), hashed=False)
    executor: str = setting("local", "where units run: local (worker processes on this machine) or ray (a Ray cluster; "
                            "--out must be a folder every node sees)", Choice("executor", lambda: EXECUTORS), hashed=False)
    ray_address: str = setting("", "address of a running Ray cluster for --executor ray (empty: start a local Ray instance)",
                               Text(), hashed=False)
    tensorboard: str = setting("", TENSORBOARD_HELP, Folder(), hashed=False)

    def check(self) -> None:
        """What is wrong whatever the data: checked with every spec (`build`), before torch is imported."""
        if steps.parse(self.steps) == (0, 0):
            raise UserError(f"--steps {self.steps}: training must be at least one iteration")
        if steps.parse(self.eval_every) == (0, 0):
            raise UserError(f"--eval-every {self.eval_every}: must be at least one iteration (1it evaluates after every step)")
        if self.nesterov and self.optimizer not in ("sgd", "fop-sgd"):
            raise UserError(f"--nesterov true applies to --optimizer sgd only (got --optimizer {self.optimizer})")
        if self.optimizer not in FOP_OPTIMIZERS:
            for flag, value, default in (("--fop-lr", self.fop_lr, 1e-3), ("--fop-linear", self.fop_linear, "scalar")):
                if value != default:
                    raise UserError(f"{flag} applies to --optimizer {' or '.join(FOP_OPTIMIZERS)} only (got --optimizer {self.optimizer})")
        if self.schedule != "one-cycle" and (self.pct_start, self.div_factor, self.final_div) != (0.3, 25.0, 1e4):
            raise UserError(f"--pct-start, --div-factor and --final-div apply to --schedule one-cycle only (got --schedule {self.schedule})")
        if self.schedule == "one-cycle" and steps.parse(self.warmup) != (0, 0):
            raise UserError("--warmup does not apply to --schedule one-cycle (it warms up itself: --pct-start)")
        if self.nesterov and self.momentum == 0:
            raise UserError("--nesterov true needs --momentum > 0 (Nesterov momentum with no momentum is plain SGD)")


@dataclass(frozen=True)
class PruneSpec:
    """How masks are chosen at each pruning level."""

    prune_fraction: float = setting(0.2, "fraction of the remaining weights pruned per level", Float(0, 1, low_open=True, high_open=True))
    output_prune_fraction: float = setting(0.1, "the output layer's own fraction per level (0: never pruned)", Float(0, 1, high_open=True))
    layer_prune_fractions: tuple = setting((), "per-layer fractions overriding the two above, e.g. fc1.weight=0.3", Rates())
    prune_scope: str = setting("layerwise", "layerwise (each layer its fraction) or global (one threshold over the layers sharing --prune-fraction)",
                               Choice("prune scope", lambda: ("layerwise", "global")))
    criterion: str = setting("large_final", "mask criterion (score; higher is kept)", Choice("criterion", _criteria))
