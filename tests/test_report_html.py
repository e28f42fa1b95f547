"""`ticketlab report`: one self-contained HTML page of every figure of real (tiny) run folders of the
experiments, a sweep, and unfinished runs; checked as text, as images, and in headless Chromium."""

import base64
import io
import re
import shutil
import subprocess
import sys

import pytest

import ticketlab
from ticketlab import cli
from ticketlab.store import Unit

TINY = dict(dataset="synthetic", model="mlp", widths=(16,), batch_size=50, eval_every="20it", workers=1)
CASES = {
    "lottery": dict(TINY, steps="40it", levels=2, seeds=(0, 1), controls=("random_reinit",)),
    "deconstruct": dict(TINY, steps="40it", levels=1, seeds=(0,), criterion=("large_final", "random"),
                        mask_one=("rewind", "reinit"), untrained=("rewind",)),
    "supermask": dict(TINY, steps="40it", seeds=(0, 1)),
    "lca": dict(TINY, steps="12it", seeds=(0, 1)),
    "stability": dict(TINY, steps="40it", copy_steps=("0it", "20it"), ticket_levels=(0, 1), seeds=(0,), interpolation_points=5),
    "earlybird": dict(TINY, batch_size=200, eval_every="5ep", steps="6ep", prune_ratios=(0.3, 0.5), eb_window=3,
                      eb_epsilon=0.2, seeds=(0, 1)),
    "prune-at-init": dict(TINY, steps="20it", eval_every="10it", methods=("snip", "random"), densities=(0.2, 0.05),
                          seeds=(0, 1)),
    "lr-range": dict(TINY, steps="30it", seeds=(0, 1)),
}
SECTIONS = ("Summary", "Lottery tickets", "Deconstructing lottery tickets", "Learned supermasks", "Loss Change Allocation",
            "Linear mode connectivity", "Early-bird tickets", "Pruning at initialisation", "LR range test")
FIGURES = ("Test accuracy vs % weights remaining", "Early-stop iteration", "Training curves per level", "Per-layer sparsity",
           "Criteria x mask-1 actions grid", "Untrained supermasks", "Supermask accuracy", "LCA per layer and per step",
           "Helped / hurt shares", "Per-neuron LCA", "Error barrier vs rewind step", "Mask distance between epochs",
           "Training curves per method", "Loss vs learning rate", "Suggested learning rates")


def folder_of(out, experiment, **settings):
    """The run folder of an experiment's tiny case (with `settings` changed), run here in its own `out`."""
    results = ticketlab._run(experiment, None, str(out), False, False, {**CASES[experiment], **settings})
    assert len(results)
    (folder,) = out.glob(f"{experiment}-*")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    folders = {name: folder_of(out / name, name) for name in CASES}
    folders["lottery-0.5"] = folder_of(out / "lottery-0.5", "lottery", prune_fraction=0.5)
    # its IMP rows from the first lottery run (--compare), the other's tickets overlaid in the report
    folders["prune-at-init"] = folder_of(out / "prune-at-init", "prune-at-init", compare=str(folders["lottery"]))
    return folders


def make(run_cli, tmp_path, *paths, name="report.html"):
    target = tmp_path / name
    code, out, err = run_cli("report", *paths, "--out", target)
    assert code == 0, err
    assert str(target) in out
    return target.read_text()


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "a resource from the network"
    assert "<script" not in page.lower() and "url(" not in page.lower() and "@import" not in page.lower()
    from PIL import Image

    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images
    for data in images:   # every embedded figure is a real, non-blank PNG
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        im.load()
        low, high = im.convert("L").getextrema()
        assert im.size[0] > 100 and high - low > 50


def test_report_of_one_lottery_run(run_cli, tmp_path, runs):
    page = make(run_cli, tmp_path, runs["lottery"])
    assert_self_contained(page)
    for text in ("Summary", "Lottery tickets", *FIGURES[:4], "finished", "dense"):
        assert text in page, text
    assert 'class="notdrawn"' not in page
    assert 'class="missing"' not in page   # a finished run misses nothing
    # hover values: the tickets' points, named and valued as on the axes
    hovers = re.findall(r"<circle [^>]*><title>([^<]*)</title>", page)
    assert any(h.startswith("winning ticket\n% weights remaining: ") and "\ntest accuracy (%): " in h for h in hovers)


def test_figures_carry_their_points_for_hover_values():
    """Every labelled data point of a figure is carried in its PNG at the pixel where it is drawn (the pixel
    there has its curve's colour), with its curve, the x category or value and the y value as plotted."""
    from PIL import Image

    from ticketlab.report import figures, html

    data = {"a": [(0, 0.1, 0.01), (1, 0.5, 0.02), (2, 0.3, 0.0)], "b": [(0, 0.7, 0.0), (1, 0.2, 0.0), (2, 0.9, 0.0)]}
    png = figures.curves([("", data)], "t", "gen", "acc (%)", categories=["x", "y", "z"])
    size, points = html.png_hover(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert size == image.size and len(points) == 6
    colours = {"a": (31, 119, 180), "b": (255, 127, 14)}   # tab:blue, tab:orange
    for (x, y, text), (curve, (category, value)) in zip(points, [(c, p) for c in data for p in zip("xyz", data[c])]):
        assert text == f"{curve}\ngen: {category}\nacc (%): {100 * value[1]:.4g}"
        assert image.getpixel((round(x), round(y))) == colours[curve]
    tag = html.img(png, "t")
    assert tag.count("<circle") == 6 and f'viewBox="0 0 {size[0]} {size[1]}"' in tag
    assert html.png_hover(b"not a png") == ((0, 0), []) and html.img(b"\x89PNG\r\n\x1a\n" + bytes(16), "x").startswith("<img")


def test_report_of_a_lottery_run_with_lca(run_cli, tmp_path):
    """`lottery --lca true`: the lottery section adds the helped share vs % weights remaining (every arm) and, for
    the ticket's first, middle and last levels, the LCA per layer and step and the helped / hurt shares."""
    folder = folder_of(tmp_path / "runs", "lottery", steps="20it", seeds=(0,), lca=True)
    page = make(run_cli, tmp_path, folder)
    assert_self_contained(page)
    lottery = page.split('<h2 id="section-0">')[1]
    for text in ("Lottery tickets", "LCA: parameters helping vs % weights remaining", "LCA per layer and per step by level",
                 "Helped / hurt shares by level"):
        assert text in lottery, text
    assert "Loss Change Allocation" not in page   # no `lca` run: its section is not there
    assert 'class="notdrawn"' not in page, re.findall(r'class="notdrawn">([^<]*)', page)
    assert 'class="missing"' not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4 + 3


def test_report_compares_every_kind_on_shared_axes(run_cli, tmp_path, runs):
    page = make(run_cli, tmp_path, *runs.values())
    assert_self_contained(page)
    for text in (*SECTIONS, *FIGURES):
        assert text in page, text
    assert 'class="notdrawn"' not in page, re.findall(r'class="notdrawn">([^<]*)', page)
    # the two lottery runs are named by the setting in which their specs differ
    assert "prune_fraction=0.5" in page and "prune_fraction=0.2" in page
    assert page.count("<tr><td>") >= 7   # one summary row per run


def test_report_of_prune_at_init_and_lr_range(run_cli, tmp_path, runs):
    """The two sections, from real runs: pruning at init with its controls, the --compare IMP rows and another
    lottery run's tickets overlaid; the LR range curves with the suggested rates as lines and a table."""
    from PIL import Image

    page = make(run_cli, tmp_path, runs["prune-at-init"], runs["lr-range"], runs["lottery-0.5"])
    assert_self_contained(page)
    for text in ("Pruning at initialisation", "Test accuracy vs % weights remaining", "Training curves per method",
                 "LR range test", "Loss vs learning rate", "Suggested learning rates", "geometric mean",
                 "snip at 20% weights", "dense ", "suggested lr "):
        assert text in page, text
    assert 'class="notdrawn"' not in page, re.findall(r'class="notdrawn">([^<]*)', page)
    assert 'class="missing"' not in page
    # the suggested rates of the table are those of summary.json
    summary = Unit(runs["lr-range"]).read("summary.json")
    assert f"{summary['max_lr']:.4g}" in page and f"{summary['min_lr']:.4g}" in page
    # pruning at init: its own figure, the lr range figure, the training curves, the lottery's own four
    sizes = [Image.open(io.BytesIO(base64.b64decode(d))).size for d in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert len(sizes) == 3 + 4, sizes
    # an unfinished lr-range run: the rates of its finished seeds (no summary.json yet)
    partial = tmp_path / runs["lr-range"].name
    shutil.copytree(runs["lr-range"], partial)
    for name in ("results.csv", "results.json", "summary.json"):
        (partial / name).unlink()
    page = make(run_cli, tmp_path, partial, name="partial.html")
    assert_self_contained(page)
    assert "geometric mean (finished seeds)" in page and "Loss vs learning rate" in page
    assert 'class="notdrawn"' not in page


def test_report_of_unfinished_runs_says_what_is_missing(run_cli, tmp_path, runs):
    lottery, earlybird = tmp_path / runs["lottery"].name, tmp_path / runs["earlybird"].name
    shutil.copytree(runs["lottery"], lottery)
    shutil.copytree(runs["earlybird"], earlybird)
    for folder in (lottery, earlybird):   # as if killed before the report: no results.csv / summary.json yet
        for name in ("results.csv", "results.json", "summary.json"):
            (folder / name).unlink()
    (lottery / "seed-1" / "level-02" / "ticket" / "MANIFEST.json").unlink()    # a unit in progress
    (lottery / "seed-1" / "level-02" / "ticket" / "checkpoint").mkdir()
    (lottery / "seed-1" / "level-02" / "ticket" / "checkpoint" / "MANIFEST.json").write_text("{}")
    page = make(run_cli, tmp_path, lottery, earlybird)
    assert_self_contained(page)
    assert "unfinished: 9 units finished, 1 in progress" in page
    assert "results.csv and summary.json are not written yet" in page
    assert "Mask distance between epochs" in page   # from the finished search's masks (safetensors)
    assert 'class="notdrawn"' not in page, re.findall(r'class="notdrawn">([^<]*)', page)


def sweep_report(run_cli, tmp_path, experiment: str, settings: str):
    """Run a tiny sweep of `experiment` (`settings`: its TOML after the experiment line) and report it:
    (sweep folder, page)."""
    toml = tmp_path / "sweep.toml"
    toml.write_text(f'experiment = "{experiment}"\n[base]\ndataset = "synthetic"\nmodel = "mlp"\nwidths = [16]\n'
                    f'batch_size = 50\nworkers = 1\n{settings}')
    code, out, err = run_cli("sweep", toml, "--out", tmp_path / "runs", "--no-progress")
    assert code == 0, err
    (sweep,) = (tmp_path / "runs").glob("sweep-*")
    page = make(run_cli, tmp_path, sweep)
    assert_self_contained(page)
    return sweep, page


def test_report_of_a_sweep(run_cli, tmp_path):
    _, page = sweep_report(run_cli, tmp_path, "lottery", 'steps = "40it"\neval_every = "20it"\nlevels = 1\ncontrols = []\n'
                           '[grid]\nprune_fraction = [0.2, 0.5]\n')
    for text in ("Sweep sweep-", "Test accuracy vs prune_fraction", "Lottery tickets", "prune_fraction=0.5"):
        assert text in page, text
    assert 'class="notdrawn"' not in page


def test_report_of_a_prune_at_init_sweep_draws_each_method(run_cli, tmp_path, monkeypatch):
    """A sweep of pruning at init is drawn from its pruned networks, a curve per point and method (not from
    lottery tickets, which it has none of), each at the weights its masks kept."""
    from ticketlab.report import figures, html

    sweep, page = sweep_report(run_cli, tmp_path, "prune-at-init",
                               'steps = "20it"\neval_every = "10it"\nmethods = ["snip", "random"]\ndensities = [0.2, 0.05]\n'
                               'controls = ["reshuffle"]\nseeds = [0]\n[grid]\nallocation = ["global", "uniform"]\n')
    for text in ("Test accuracy vs % weights remaining, per point", "Test accuracy vs allocation"):
        assert text in page, text
    assert 'class="notdrawn"' not in page

    drawn = {}
    monkeypatch.setattr(figures, "accuracy_vs_sparsity", lambda data, title: drawn.setdefault("sparsity", data) and b"")
    monkeypatch.setattr(figures, "curves", lambda data, *a, **k: drawn.setdefault("axis", data) and b"")
    _, (folder,) = html.open_path(str(sweep))
    html.sweep_section(folder)
    (_, by_label, _), = drawn["sparsity"]
    assert set(by_label) == {f"allocation={a}, {m}" for a in ("global", "uniform") for m in ("snip", "random")}
    kept = {row["weights_remaining"] for row in folder.rows if row.get("arm") == "pruned"}
    for points in by_label.values():
        assert len(points) == 2 and {p[0] for p in points} <= kept and all(0 <= p[1] <= 1 for p in points)
    (_, series), = drawn["axis"]
    assert set(series) == {f"{m}, density {d}" for m in ("snip", "random") for d in ("0.05", "0.2")}


def test_forget_runs_are_read_from_their_method_and_generation_columns(run_cli, tmp_path):
    """Forget-and-relearn folders are drawn from their rows alone (generation 0 is `none`, `long` a baseline)."""
    folder = tmp_path / "forget-0123456789"
    Unit(folder).write("spec.json", {"experiment": "forget", "non_default": {}, "spec": {"forget": {"seeds": [0, 1]}}})
    rows = [{"method": "none", "generation": 0, "seed": s, "test_accuracy": 0.5 + s / 100, "diverged": False} for s in (0, 1)]
    rows += [{"method": m, "generation": g, "seed": s, "test_accuracy": 0.5 + g / 10 + s / 100, "train_accuracy": 0.9,
              "diverged": False} for m in ("llf", "ke") for g in (1, 2) for s in (0, 1)]
    rows += [{"method": "long", "generation": 2, "seed": s, "test_accuracy": 0.66, "diverged": False} for s in (0, 1)]
    Unit(folder).write("results.csv", rows)
    page = make(run_cli, tmp_path, folder)
    assert_self_contained(page)
    for text in ("Forget and relearn", "Test accuracy per generation", "Train accuracy per generation", "ke gen 2: 70.50%"):
        assert text in page, text
    assert 'class="notdrawn"' not in page


def test_json_and_csv_figures_need_no_torch(tmp_path, runs, cli_env):
    """Run folders whose figures come from JSON and CSV files only are reported without importing torch."""
    target = tmp_path / "r.html"
    paths = [str(runs[k]) for k in ("lottery", "lottery-0.5", "deconstruct", "supermask", "stability", "earlybird",
                                    "prune-at-init", "lr-range")]
    code = (f"import sys; from ticketlab import cli; rc = cli.main(['report', *{paths!r}, '--out', {str(target)!r}]); "
            f"assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'class="notdrawn"' not in target.read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path, runs, capsys):
    def run_cli(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("ticketlab: error: ") and "Traceback" not in err, err
        return code, out, err

    code, out, err = run_cli("report", tmp_path, "--out", tmp_path / "r.html")
    assert code == 2 and err.count("\n") == 1 and "not a ticketlab run folder" in err
    odd = tmp_path / "odd-0123456789"
    Unit(odd).write("spec.json", {"experiment": "bogus"})
    code, out, err = run_cli("report", odd)
    assert code == 2 and err.count("\n") == 1 and "'bogus'" in err and "valid: lottery" in err
    code, out, err = run_cli("report", runs["lottery"], "--out", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "is a folder" in err
    code, out, err = run_cli("report")
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def test_report_help(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["report", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert "PATH" in text and "--out FILE" in text and "self-contained HTML" in text


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.heavy
def test_report_renders_in_headless_chromium(run_cli, tmp_path, runs):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (`apt-get install chromium`; .ci/run installs it on a fresh machine)")
    page = tmp_path / "report.html"
    make(run_cli, tmp_path, *runs.values())
    shot = tmp_path / "shot.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    done = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,4000", "--enable-logging=stderr", "--v=0",
                           page.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console   # the page has no script: any console message is an error
    from PIL import Image, ImageStat

    im = Image.open(shot).convert("L")
    assert im.size == (1280, 4000)
    assert ImageStat.Stat(im).var[0] > 100, "the screenshot is blank"
    figures = im.crop((0, 800, 1280, 4000))   # below the summary: the figures drew
    assert ImageStat.Stat(figures).var[0] > 100
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h2" in dom.stdout and "Early-bird tickets" in dom.stdout and dom.stdout.count("<img") >= 15


def test_a_fop_run_gets_its_preconditioners_drawn(run_cli, tmp_path, monkeypatch):
    """A run trained with FOP gets the scale of each layer's preconditioner while its first unit trained,
    read from the metrics rows (mean over seeds); a run without FOP gets no such section."""
    from ticketlab.report import figures, html

    folder = folder_of(tmp_path / "fop", "lottery", optimizer="fop-sgd", fop_lr=0.5, lr=0.05, controls=())
    page = make(run_cli, tmp_path, folder)
    assert "FOP preconditioners" in page and "Preconditioner scale per layer" in page
    assert 'class="notdrawn"' not in page
    drawn = {}
    monkeypatch.setattr(figures, "training_curves", lambda panels, *a, **k: drawn.setdefault("panels", panels) and b"")
    runs, _ = html.open_path(str(folder))
    html.fop_section(runs)
    (name, curves), = drawn["panels"]
    assert "level-00" in name and set(curves) == {"hidden.0.weight", "fc.weight"}
    metrics = [html.Unit(folder / f"seed-{s}" / "level-00" / "ticket").read("metrics.jsonl") for s in (0, 1)]
    last = curves["fc.weight"][-1]
    assert last[0] == metrics[0][-1]["step"]
    assert abs(last[1] - sum(m[-1]["fop_scale"]["fc.weight"] for m in metrics) / 2) < 1e-9 and last[1] != 1.0
    assert html.fop_section(html.open_path(str(folder_of(tmp_path / "plain", "lottery", controls=())))[0]) is None
