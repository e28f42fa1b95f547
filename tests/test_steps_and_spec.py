import argparse
import dataclasses

import pytest

from ticketlab import names
from ticketlab import spec as specs
from ticketlab import steps
from ticketlab.errors import UserError
from ticketlab.specs.deconstruct import DeconstructSpec
from ticketlab.specs.earlybird import EarlyBirdSpec
from ticketlab.specs.lca import LCASpec
from ticketlab.specs.lottery import LotterySpec
from ticketlab.specs.stability import StabilitySpec
from ticketlab.specs.supermask import SupermaskSpec


def test_step_notation_resolves_against_epoch_size():
    assert steps.resolve("500it", 40) == 500
    assert steps.resolve("2ep", 40) == 80
    assert steps.resolve("1ep50it", 40) == 90
    assert steps.resolve("0it", 40) == 0
    assert steps.format_step(90, 40) == "2ep10it"
    assert steps.format_step(80, 40) == "2ep"
    for text in ("500it", "3ep", "1ep7it"):
        assert steps.resolve(steps.format_step(steps.resolve(text, 13), 13), 13) == steps.resolve(text, 13)


@pytest.mark.parametrize("bad", ["", "ep", "5", "-3it", "1.5ep", "2it3ep", "3 epochs"])
def test_bad_steps_are_refused(bad):
    with pytest.raises(UserError, match="expected"):
        steps.parse(bad)


def default_spec():
    return specs.build(LotterySpec, {})


def test_every_setting_has_one_declaration_giving_flag_help_and_key():
    settings = specs.settings_of(LotterySpec)
    names = [s.name for s in settings]
    assert len(names) == len(set(names)), "setting names must be unique across groups (flat TOML keys and flags)"
    parser = argparse.ArgumentParser()
    specs.add_arguments(parser, LotterySpec)
    flags = {a.dest: a for a in parser._actions if a.dest in names}
    assert set(flags) == set(names)
    for s in settings:
        assert flags[s.name].option_strings == [s.flag]
        assert s.help and s.help in flags[s.name].help


def test_hash_ignores_defaults_and_unhashed_settings_but_not_others():
    base = default_spec()
    assert specs.spec_hash(base) == specs.spec_hash(specs.replace(base, lr=base.train.lr))
    assert specs.spec_hash(base) == specs.spec_hash(specs.replace(base, seeds=(0, 1, 2), data_dir="/elsewhere", device="cpu"))
    changed = {specs.spec_hash(specs.replace(base, **kw)) for kw in
               ({"lr": 0.5}, {"levels": 3}, {"model": "lenet_300_100"}, {"rewind": "10it"}, {"prune_fraction": 0.3})}
    assert len(changed) == 5 and specs.spec_hash(base) not in changed
    assert specs.non_default(specs.replace(base, lr=0.5)) == {"lr": 0.5}


def test_cli_flags_and_toml_give_the_same_spec(tmp_path):
    parser = argparse.ArgumentParser()
    specs.add_arguments(parser, LotterySpec)
    args = parser.parse_args(["--model", "lenet_300_100", "--steps", "50ep", "--rewind", "1000it", "--retrain", "lr-rewind",
                              "--seeds", "0,1,2", "--levels", "20", "--widths", "none", "--layer-prune-fractions", "fc.weight=0.05"])
    from_flags = specs.from_arguments(LotterySpec, args)
    toml = tmp_path / "exp.toml"
    toml.write_text('model = "lenet_300_100"\nlevels = 20\n[train]\nsteps = "50ep"\n[lottery]\nrewind = "1000it"\n'
                    'retrain = "lr-rewind"\nseeds = [0, 1, 2]\n[prune]\nlayer_prune_fractions = { "fc.weight" = 0.05 }\n')
    from_file = specs.from_toml(LotterySpec, toml)
    assert from_flags == from_file
    assert from_file.lottery.seeds == (0, 1, 2) and from_file.train.steps == "50ep"
    # flags given with --config override the file
    over = specs.from_arguments(LotterySpec, parser.parse_args(["--levels", "3"]), str(toml))
    assert over.lottery.levels == 3 and over.model.model == "lenet_300_100"


@pytest.mark.parametrize("key,value,message", [
    ("levels", -1, ">= 0"),
    ("prune_fraction", 1.5, "(0, 1)"),
    ("prune_fraction", 0.0, "(0, 1)"),
    ("batch_size", 0, ">= 1"),
    ("model", "resnet999", "valid: "),
    ("optimizer", "rmsprop", "valid: adam, fop-adam, fop-sgd, sgd"),
    ("criterion", "biggest", "large_final"),
    ("steps", "ten", "expected"),
    ("no_such_setting", 1, "unknown setting"),
])
def test_bad_values_raise_one_line_user_errors(key, value, message):
    with pytest.raises(UserError) as e:
        specs.from_mapping(LotterySpec, {key: value})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_toml_key_and_bad_toml_are_named(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match="unknown setting 'learning_rate'"):
        specs.from_toml(LotterySpec, f)
    f.write_text("levels = = 3\n")
    with pytest.raises(UserError, match="not valid TOML"):
        specs.from_toml(LotterySpec, f)
    with pytest.raises(UserError, match="does not exist"):
        specs.from_toml(LotterySpec, tmp_path / "missing.toml")


def test_specs_are_frozen():
    s = default_spec()
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'lr'"):
        s.train.lr = 1.0


def test_optional_lists_take_none():
    table = {s.name: s for s in specs.settings_of(LotterySpec)}
    assert table["controls"].parse("none", "--controls") == ()
    assert table["controls"].parse("random_prune,reshuffle", "--controls") == ("random_prune", "reshuffle")
    with pytest.raises(UserError, match="valid: random_prune, random_reinit, reshuffle"):
        table["controls"].parse("none,bogus", "--controls")
    with pytest.raises(UserError, match="--seeds: expected an integer"):
        table["seeds"].parse("none", "--seeds")
    with pytest.raises(UserError, match="--seeds: must not be empty"):
        table["seeds"].coerce([], "--seeds")


# Hashes computed once with the code of commit 4594128 (before the specs moved to `ticketlab.specs`). A run
# folder is named `<experiment>-<hash>`: if one of these changes, every existing run folder of that kind is
# silently orphaned (recomputed instead of resumed). Change them only on purpose, with a migration.
PINNED_HASHES = [
    (LotterySpec, {}, "a69dde6605"),
    (LotterySpec, {"levels": 3, "lr": 0.01}, "72c42c757f"),
    (LotterySpec, {"controls": (), "layer_prune_fractions": {"fc1.weight": 0.3}, "widths": (300, 100), "steps": "2ep",
                   "retrain": "finetune", "retrain_steps": "1ep", "dataset": "mnist", "device": "cuda", "seeds": (0, 1, 2)},
     "d283889911"),
    (LCASpec, {}, "9af970c734"),
    (SupermaskSpec, {}, "8c12a14824"),
    (SupermaskSpec, {"method": "edge-popup", "lr": 0.2, "seeds": (0, 1)}, "8482ab35dd"),
    (DeconstructSpec, {}, "6fff6b0351"),
    (DeconstructSpec, {"criterion": ("large_final", "random"), "mask_one": ("rewind", "signed_constant"), "levels": 2},
     "1a0a0ed973"),
    (StabilitySpec, {}, "e8037df72f"),
    (EarlyBirdSpec, {}, "7fdbda1196"),
]


@pytest.mark.parametrize("spec_cls,settings,expected", PINNED_HASHES,
                         ids=[f"{c.experiment}-{i}" for i, (c, _, _) in enumerate(PINNED_HASHES)])
def test_spec_hashes_are_pinned(spec_cls, settings, expected):
    spec = specs.replace(specs.build(spec_cls, {}), **settings)
    assert specs.spec_hash(spec) == expected


def test_registry_names_match_the_registries():
    """`ticketlab.names` lets specs validate names without torch; it must list exactly the registries'
    names, in their order (help texts list them)."""
    from ticketlab.data import DATASETS
    from ticketlab.models import INITS, MODELS
    from ticketlab.sparse.actions import MASK_ONE_ACTIONS, MASK_ZERO_ACTIONS
    from ticketlab.sparse.criteria import CRITERIA
    from ticketlab.sparse.supermask import METHODS

    assert names.DATASETS == tuple(DATASETS)
    assert names.MODELS == tuple(MODELS)
    assert names.INITS == tuple(INITS)
    assert names.CRITERIA == tuple(CRITERIA)
    assert names.MASK_ONE_ACTIONS == tuple(MASK_ONE_ACTIONS)
    assert names.MASK_ZERO_ACTIONS == tuple(MASK_ZERO_ACTIONS)
    assert names.SUPERMASK_METHODS == tuple(METHODS)
