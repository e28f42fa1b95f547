import pickle

import pytest
import torch

from ticketlab import spec as specs
from ticketlab.errors import UserError
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.io import CorruptFile, atomic_write_bytes, load_tensors
from ticketlab.store import Run, Unit


class Exploit:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    f = tmp_path / "a" / "x.bin"
    atomic_write_bytes(f, b"one")
    atomic_write_bytes(f, b"two")
    assert f.read_bytes() == b"two"
    assert [p.name for p in f.parent.iterdir()] == ["x.bin"]


def test_unit_commit_verifies_and_detects_truncation_and_edits(tmp_path):
    u = Unit(tmp_path / "u")
    u.commit({"w.safetensors": {"a": torch.arange(6.0)}, "r.json": {"acc": 0.5}, "m.jsonl": [{"s": 1}, {"s": 2}]})
    assert Unit(u.path).is_done()
    assert torch.equal(u.read("w.safetensors")["a"], torch.arange(6.0))
    assert u.read("m.jsonl") == [{"s": 1}, {"s": 2}]
    data = (u.path / "w.safetensors").read_bytes()
    (u.path / "w.safetensors").write_bytes(data[:-5])
    fresh = Unit(u.path)
    assert not fresh.is_done()
    with pytest.raises(CorruptFile, match="SHA-256"):
        fresh.read("w.safetensors")
    (u.path / "r.json").write_text('{"acc": 0.99}')
    with pytest.raises(CorruptFile):
        Unit(u.path).read("r.json")


def test_unit_without_manifest_is_not_done(tmp_path):
    u = Unit(tmp_path / "u")
    u.commit({"r.json": {"a": 1}})
    (u.path / "MANIFEST.json").unlink()
    assert not Unit(u.path).is_done()
    (u.path / "MANIFEST.json").write_text("{ not json")
    assert not Unit(u.path).is_done()


def test_pickle_in_place_of_weights_or_checkpoint_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Exploit(marker))
    # as a bare weights file
    (tmp_path / "w.safetensors").write_bytes(evil)
    with pytest.raises(CorruptFile):
        load_tensors(tmp_path / "w.safetensors")
    # as a checkpoint, with a manifest forged to match it
    u = Unit(tmp_path / "u")
    u.save_checkpoint({"x": torch.ones(2)}, {"step": 5})
    ck = u.path / "checkpoint"
    (ck / "state-5.safetensors").write_bytes(evil)
    assert u.load_checkpoint() is None
    import hashlib, json
    m = json.loads((ck / "MANIFEST.json").read_text())
    m["files"]["state-5.safetensors"] = {"size": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}
    (ck / "MANIFEST.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFile, match="not a valid safetensors"):
        u.unit("checkpoint").read("state-5.safetensors")
    assert u.load_checkpoint() is None
    assert not marker.exists()


def test_checkpoint_keeps_only_the_newest(tmp_path):
    u = Unit(tmp_path / "u")
    for step in (10, 20, 30):
        u.save_checkpoint({"w": torch.full((3,), float(step))}, {"step": step})
    tensors, state = u.load_checkpoint()
    assert state["step"] == 30 and tensors["w"][0] == 30.0
    assert sorted(p.name for p in (u.path / "checkpoint").iterdir()) == ["MANIFEST.json", "state-30.json", "state-30.safetensors"]


def test_run_folder_named_by_spec_hash_and_force_discards(tmp_path):
    spec = specs.from_mapping(LotterySpec, {"levels": 2})
    run = Run.open(tmp_path, spec)
    assert run.path.name == f"lottery-{specs.spec_hash(spec)}"
    assert run.read("spec.json")["non_default"] == {"levels": 2}
    run.unit("seed-0").commit({"r.json": {}})
    again = Run.open(tmp_path, spec)
    assert again.unit("seed-0").is_done()
    forced = Run.open(tmp_path, spec, force=True)
    assert not forced.unit("seed-0").is_done() and (forced.path / "spec.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [run.path.name]


def test_a_run_folder_made_under_other_defaults_is_not_reused(tmp_path):
    spec = specs.from_mapping(LotterySpec, {"levels": 2})
    run = Run.open(tmp_path, spec)
    record = run.read("spec.json")
    record["spec"]["train"]["lr"] = 0.123  # as if the default learning rate had been different then
    run.write("spec.json", record)
    with pytest.raises(UserError, match="other values of lr"):
        Run.open(tmp_path, spec)
    record["spec"]["train"]["device"] = "cuda"  # unhashed settings may differ
    record["spec"]["train"]["lr"] = spec.train.lr
    run.write("spec.json", record)
    Run.open(tmp_path, spec)
