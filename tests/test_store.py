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


def test_encodings_are_byte_for_byte_what_the_formats_say():
    from ticketlab.store import encode, rows_to_csv

    # jsonl: one object per line, keys sorted (files of a resumed run must equal an uninterrupted run's byte for byte)
    assert encode("m.jsonl", [{"b": 1, "a": 2}, {"c": None}]) == b'{"a": 2, "b": 1}\n{"c": null}\n'
    # csv: the union of the rows' columns in order of first appearance; missing cells empty
    assert rows_to_csv([{"a": 1}, {"b": 2, "a": 3}, {"c": "x"}]) == "a,b,c\n1,,\n3,2,\n,,x\n"
    assert encode("r.csv", [{"a": 1, "b": 0.5}]) == b"a,b\n1,0.5\n"
    assert encode("notes.txt", "hello") == b"hello" and encode("blob.bin", b"\x00\x01") == b"\x00\x01"


def test_a_unit_with_a_listed_file_missing_is_not_done(tmp_path):
    u = Unit(tmp_path / "u")
    u.commit({"a.json": {"x": 1}, "b.json": {"y": 2}})
    (u.path / "b.json").unlink()
    assert not Unit(u.path).is_done()
    with pytest.raises(CorruptFile, match="cannot read"):
        Unit(u.path).read("b.json")
    with pytest.raises(CorruptFile, match="not listed"):
        Unit(u.path).read("c.json")


def test_commit_again_replaces_the_files_keeps_sub_folders_and_clears_the_checkpoint(tmp_path):
    u = Unit(tmp_path / "u")
    u.commit({"a.json": {"v": 1}, "stale.json": {"v": 0}})
    (u.path / "parameters").mkdir()
    (u.path / "parameters" / "chunk-0.bin").write_bytes(b"streamed while training")
    u.save_checkpoint({"w": torch.zeros(2)}, {"step": 3})
    u.commit({"a.json": {"v": 2}})
    names = sorted(p.name for p in u.path.iterdir())
    assert names == ["MANIFEST.json", "a.json", "parameters"], "stale.json and the checkpoint are gone"
    assert (u.path / "parameters" / "chunk-0.bin").read_bytes() == b"streamed while training"
    fresh = Unit(u.path)
    assert fresh.is_done() and fresh.read("a.json") == {"v": 2} and set(fresh.manifest()["files"]) == {"a.json"}
    # clear=False keeps what is there (the checkpoint too)
    u.save_checkpoint({"w": torch.zeros(2)}, {"step": 4})
    u.commit({"b.json": {"v": 3}}, clear=False)
    assert (u.path / "a.json").exists() and u.load_checkpoint()[1]["step"] == 4


def test_an_open_ended_unit_is_never_done(tmp_path):
    """`write` adds files one by one (a run folder's summaries): readable and verified, but not a finished unit."""
    u = Unit(tmp_path / "run")
    u.write("summary.json", {"n": 1})
    u.write("results.csv", [{"a": 1}])
    assert u.read("summary.json") == {"n": 1} and u.read("results.csv") == [{"a": "1"}]
    assert not Unit(u.path).is_done() and Unit(u.path).manifest()["complete"] is False


def test_run_folders_are_made_under_a_new_nested_out_and_show_needs_spec_json(tmp_path):
    from ticketlab.store import open_existing

    spec = specs.from_mapping(LotterySpec, {"levels": 2})
    run = Run.open(tmp_path / "new" / "deeper" / "runs", spec)
    assert (run.path / "spec.json").is_file()
    assert open_existing(run.path).path == run.path
    with pytest.raises(UserError, match="not a ticketlab run folder"):
        open_existing(tmp_path / "new")


def test_an_edit_that_keeps_the_size_is_caught_by_the_hash(tmp_path):
    u = Unit(tmp_path / "u")
    u.commit({"r.json": {"acc": 0.51}})
    (u.path / "r.json").write_text((u.path / "r.json").read_text().replace("0.51", "0.99"))
    assert not Unit(u.path).is_done()
    with pytest.raises(CorruptFile, match="SHA-256"):
        Unit(u.path).read("r.json")


@pytest.mark.parametrize("manifest", ['[]', '{"complete": true, "files": "r.json"}', '{"complete": true}', '"done"'])
def test_a_malformed_manifest_means_not_done_never_a_crash(tmp_path, manifest):
    u = Unit(tmp_path / "u")
    u.commit({"r.json": {"acc": 0.5}})
    (u.path / "MANIFEST.json").write_text(manifest)
    fresh = Unit(u.path)
    assert fresh.manifest() is None and not fresh.is_done()
    with pytest.raises(CorruptFile, match="not listed"):
        fresh.read("r.json")


def test_a_removed_unit_is_not_done_even_to_the_object_that_verified_it(tmp_path):
    u = Unit(tmp_path / "u")
    u.commit({"r.json": {}})
    assert u.is_done()
    u.remove()
    assert not u.path.exists() and not u.is_done()


# ------------------------------------------------------------------------------- start weights by reference
def _source_and_mask(tmp_path, seed=0):
    from ticketlab.store import Derived, times_mask

    g = torch.Generator().manual_seed(seed)
    rewind = {"fc.weight": torch.randn(30, 17, generator=g), "fc.bias": torch.randn(30, generator=g)}
    source = Unit(tmp_path / "level-00" / "ticket")
    source.commit({"rewind.safetensors": rewind})
    mask = {"fc.weight": torch.rand(30, 17, generator=g) < 0.1}
    start = times_mask(rewind, mask)
    return source, mask, start, lambda tensors: Derived(source, "rewind.safetensors", "mask.safetensors", tensors)


def test_derivable_start_weights_are_stored_by_reference_and_read_back_exactly(tmp_path):
    from ticketlab.codec import identical

    source, mask, start, derived = _source_and_mask(tmp_path)
    unit = Unit(tmp_path / "level-03" / "ticket")
    unit.commit({"mask.safetensors": mask, "start.safetensors": derived(start)})
    assert not (unit.path / "start.safetensors").exists()
    entry = unit.manifest()["files"]["start.safetensors"]
    assert entry["derived"]["from"] == "../../level-00/ticket/rewind.safetensors"
    fresh = Unit(unit.path)
    assert fresh.is_done()
    back = fresh.read("start.safetensors")
    assert back.keys() == start.keys() and all(identical(back[k], start[k]) for k in start)


def test_start_weights_the_reference_would_not_reproduce_are_stored_in_full(tmp_path):
    from ticketlab.codec import identical

    _, mask, start, derived = _source_and_mask(tmp_path)
    other = {k: v.clone() for k, v in start.items()}
    other["fc.bias"][0] += 1.0   # not the source times the mask
    unit = Unit(tmp_path / "u")
    unit.commit({"mask.safetensors": mask, "start.safetensors": derived(other)})
    assert "derived" not in unit.manifest()["files"]["start.safetensors"]
    assert identical(Unit(unit.path).read("start.safetensors")["fc.bias"], other["fc.bias"])


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_reference_whose_source_changed_or_vanished_is_a_corrupt_unit(tmp_path, damage):
    source, mask, start, derived = _source_and_mask(tmp_path)
    unit = Unit(tmp_path / "level-02" / "ticket")
    unit.commit({"mask.safetensors": mask, "start.safetensors": derived(start)})
    assert Unit(unit.path).is_done()   # the source is hashed (and remembered) while it is intact
    if damage == "changed":   # recommitted with other weights: a valid unit, but not the one referenced
        source.commit({"rewind.safetensors": {k: v + 1 for k, v in start.items()}})
    else:
        source.remove()
    fresh = Unit(unit.path)
    assert not fresh.is_done()
    with pytest.raises(CorruptFile, match="missing or changed"):
        fresh.read("start.safetensors")


def test_a_recommit_in_full_removes_the_file_a_reference_replaces(tmp_path):
    _, mask, start, derived = _source_and_mask(tmp_path)
    unit = Unit(tmp_path / "u")
    unit.commit({"mask.safetensors": mask, "start.safetensors": start})
    assert (unit.path / "start.safetensors").exists()
    unit.commit({"mask.safetensors": mask, "start.safetensors": derived(start)})
    assert not (unit.path / "start.safetensors").exists() and Unit(unit.path).is_done()


@pytest.mark.parametrize("text", ["a,b,c\n1,2,3\n4,5\n6,7,8,9\n\n10,11,12\n", "", "a,b\n", 'x,"y,z"\n"q""",2\n',
                                  "a,b\r\n1,2\r\n", "a,a\n1,2\n", 'a\n"multi\nline"\n'])
def test_csv_rows_are_what_csv_dictreader_reads(text):
    import csv
    import io

    from ticketlab.store import csv_rows
    assert csv_rows(text) == list(csv.DictReader(io.StringIO(text)))


def test_rows_to_csv_is_what_csv_dictwriter_writes():
    import csv
    import io

    from ticketlab.store import rows_to_csv
    rows = [{"a": 1, "b": 0.1}, {"b": "x,y", "c": None}, {"a": True, "d": 'q"'}, {}]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["a", "b", "c", "d"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    assert rows_to_csv(rows) == buf.getvalue()
