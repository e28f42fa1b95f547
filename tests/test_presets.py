"""Paper presets (`ticketlab.presets`, `--preset NAME`): every preset builds a valid spec for each experiment it
names and trains a few steps; a preset is only setting values (flags and files override it, the hash is that of
the settings); unknown names are one line, exit 2; `ticketlab presets` lists them all."""

import dataclasses
import math

import pytest
import torch

from ticketlab import cli, presets
from ticketlab import spec as specs

PAIRS = [(name, experiment) for name, p in presets.PRESETS.items() for experiment in p["experiments"]]

# the input shape of each data set the presets use (synthetic data of that shape stands in for the files)
SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "mnist1d": (40,)}


def spec_class(experiment):
    return cli.EXPERIMENTS[experiment].spec_class()


def parse(argv):
    parser = cli.build_parser(commands={argv[0]})
    args = parser.parse_args(argv)
    return specs.from_arguments(spec_class(argv[0]), args, args.config)


@pytest.mark.parametrize("name,experiment", PAIRS)
def test_every_preset_builds_its_spec_with_every_setting_it_names(name, experiment):
    spec = specs.from_mapping(spec_class(experiment), {"preset": name})
    flat = specs.flat_values(spec)
    for key, value in presets.values(name, experiment).items():
        assert specs.flat_values(specs.build(type(spec), {key: specs.preset_values(type(spec), name)[key]}))[key] == flat[key]
    p = presets.PRESETS[name]
    assert p["source"] and p["result"] and p["note"]
    assert name.startswith("openlth-") or name[:-len(name.split("-", 1)[1]) - 1][-4:].isdigit()   # <author><year>-<model>


def test_every_experiment_with_weights_has_a_preset():
    covered = {experiment for _, experiment in PAIRS}
    assert {"lottery", "deconstruct", "supermask", "lca", "stability", "earlybird"} <= covered
    assert covered <= set(cli.EXPERIMENTS)


def _synthetic(shape, classes=10, n=64, seed=0):
    """A learnable stand-in of the given input shape: class means plus noise."""
    from ticketlab.data import Dataset

    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, *shape, generator=g)
    y = torch.arange(n) % classes
    x = means[y] + torch.randn(n, *shape, generator=g)
    return Dataset("synthetic", x.contiguous(), y, x.clone(), y.clone(), classes)


BIG = ("vgg16_bn", "resnet18")   # ~1-2 s of CPU each even at batch 8: with the slow checks


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if p["settings"]["model"] in BIG else n
                                  for n, p in presets.PRESETS.items()])
def test_every_preset_trains_five_steps(name):
    """Each preset's recipe (its first experiment's spec: model, init, optimizer, rate, schedule, label smoothing)
    trains 5 steps on synthetic data of its data set's input shape. The batch is cut to 8 so the big networks
    stay quick; everything else is the preset's."""
    from ticketlab import models
    from ticketlab.train import Schedule, fit

    experiment = next(iter(presets.PRESETS[name]["experiments"]))
    spec = specs.from_mapping(spec_class(experiment), {"preset": name})
    train = spec.resolved_train() if hasattr(spec, "resolved_train") else spec.train
    train = dataclasses.replace(train, batch_size=8, eval_every="5it")
    d, m = spec.data, spec.model
    shape = (3, 64, 64) if d.dataset == "folder" else SHAPES[d.dataset]   # folder images: smaller than 224 here
    data = _synthetic(shape)
    torch.set_num_threads(1)
    model = models.build(m.model, shape, data.num_classes, seed=0, init=m.init, widths=m.widths)
    ipe = math.ceil(len(data.train_y) / train.batch_size)
    result = fit(model, data, train, seed=0, start=0, end=5, schedule=Schedule.from_spec(train, ipe))
    assert result.steps == 5 and not result.diverged and math.isfinite(result.final_loss)


def test_flags_and_config_override_a_preset_and_the_hash_is_that_of_the_settings(tmp_path):
    by_preset = parse(["lottery", "--preset", "greydanus2020-mnist1d"])
    by_flags = parse(["lottery", "--dataset", "mnist1d", "--model", "mnist1d_mlp", "--widths", "500,500", "--optimizer", "adam",
                      "--lr", "2e-2", "--batch-size", "100", "--steps", "1501it",
                      "--prune-fraction", "0.2", "--output-prune-fraction", "0.2", "--levels", "11"])
    assert by_preset == by_flags and specs.spec_hash(by_preset) == specs.spec_hash(by_flags)

    flagged = parse(["lottery", "--preset", "greydanus2020-mnist1d", "--lr", "1e-3", "--levels", "2"])
    assert (flagged.train.lr, flagged.lottery.levels, flagged.model.widths) == (1e-3, 2, (500, 500))
    # a preset whose value is overridden back to the default hashes as if the preset had not set it
    assert specs.spec_hash(parse(["lottery", "--preset", "greydanus2020-mnist1d", "--lr", "5e-3"])) == \
        specs.spec_hash(specs.replace(by_flags, lr=5e-3))

    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "greydanus2020-mnist1d"\n[train]\nlr = 0.001\n')
    from_file = parse(["lottery", "--config", str(cfg)])
    assert from_file.train.lr == 1e-3 and from_file.model.widths == (500, 500)
    assert parse(["lottery", "--config", str(cfg), "--lr", "0.01"]).train.lr == 0.01            # flags beat the file
    other = parse(["lottery", "--config", str(cfg), "--preset", "openlth-lenet"])              # --preset replaces the file's
    assert other.data.dataset == "mnist" and other.train.lr == 1e-3 and other.model.widths is None


def test_a_sweep_file_may_name_a_preset(tmp_path):
    from ticketlab.run import sweep as sweeps

    f = tmp_path / "s.toml"
    f.write_text('experiment = "lottery"\npreset = "greydanus2020-mnist1d"\n[base]\nlevels = 2\n[grid]\nlr = [1e-3, 2e-2]\n')
    sweep = sweeps.load(f, {"lottery": spec_class("lottery")})
    assert [s.train.lr for s in sweep.specs] == [1e-3, 2e-2]
    assert {(s.model.widths, s.lottery.levels, s.prune.output_prune_fraction) for s in sweep.specs} == {((500, 500), 2, 0.2)}
    assert sweeps.load(f, {"lottery": spec_class("lottery")}, preset="openlth-lenet").specs[0].data.dataset == "mnist"


@pytest.mark.parametrize("argv,message", [
    (["lottery", "--preset", "nope"], "unknown preset 'nope'; valid: frankle2019-lenet, "),
    (["supermask", "--preset", "frankle2019-lenet"], "preset 'frankle2019-lenet' is for lottery, deconstruct, stability, lca, "
                                                    "not supermask; presets for supermask: zhou2019-lenet"),
])
def test_a_bad_preset_is_one_line_and_exit_2(capsys, argv, message):
    code = cli.main(argv + ["--out", "/nonexistent/never-written"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("ticketlab: error: " + message) and err.count("\n") == 1


def test_the_presets_command_lists_every_preset_with_its_settings_and_source(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, p in presets.PRESETS.items():
        assert f"\n{name}\n" in "\n" + out
        assert p["source"] in out
    assert "--lr 0.0012" in out and "--steps 1501it" in out
