"""Faults of the machine and the file system, and two commands on one run folder: every expected failure is
one line (`ticketlab: error: ...`, the path and what to do) with its exit code (2 bad input, 3 a fault of
the machine or of a file), nothing half-written is left, and one writer per run folder (an OS lock).

Most run in this process through `cli.main` on a tiny synthetic spec; the real commands in subprocesses
(a second command beside a running one, kill -9 of the lock holder) are marked `heavy`."""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ticketlab import cli, io, store
from ticketlab.errors import UserError
from ticketlab.run import execute, lock

TINY = ["--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--steps", "20it", "--batch-size", "100",
        "--eval-every", "10it", "--levels", "1", "--controls", "none", "--workers", "1", "--no-progress"]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def run_main(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, expected_code, *parts):
    assert code == expected_code, (code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ticketlab: error: ") and "Traceback" not in err, err
    for part in parts:
        assert str(part) in err, (part, err)


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.name.startswith("lottery-")]
    return folder


def rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((folder / "results.json").read_text())]


def leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.tmp"))


# -------------------------------------------------------------------------------------------- --out
def test_out_at_a_file_or_under_a_file_is_one_line_exit_2_before_anything_runs(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("not a folder")
    one_line(*run_main(capsys, "lottery", *TINY, "--out", f)[::2], 2, f"--out {f} is a file")
    one_line(*run_main(capsys, "lottery", *TINY, "--out", f / "runs")[::2], 2, f"is under {f}, which is a file")
    assert f.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [f]


def test_read_only_out_is_one_line_exit_3(capsys, tmp_path, monkeypatch):
    """A folder that cannot be written: for real (chmod) where that restricts this user, and a
    PermissionError at the write call (root may write anywhere)."""
    out = tmp_path / "ro"
    out.mkdir()
    if not ROOT:
        out.chmod(0o555)
        try:
            one_line(*run_main(capsys, "lottery", *TINY, "--out", out / "runs")[::2], 3, str(out), "Permission denied")
            one_line(*run_main(capsys, "lottery", *TINY, "--out", out)[::2], 3, str(out), "Permission denied")
        finally:
            out.chmod(0o755)
        assert list(out.iterdir()) == []

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path.parent / f".{path.name}.x.tmp"))

    monkeypatch.setattr(io, "_create_temp", denied)
    code, _, err = run_main(capsys, "lottery", *TINY, "--out", out)
    one_line(code, err, 3, str(out), "Permission denied (EACCES)", "make it writable")
    assert leftovers(out) == []


def test_full_disk_is_one_line_exit_3_nothing_half_written_and_resumes(capsys, tmp_path, monkeypatch):
    """ENOSPC from the kernel at the write call (writes into level 1 go to /dev/full): one line, exit 3,
    no temporary file left, no manifest for the unit; run again on a disk with room, it resumes to the
    numbers of an uninterrupted run."""
    real = io._create_temp

    def full(path):
        fd, tmp = real(path)
        if "level-01" in str(path):
            if os.path.exists("/dev/full"):
                dev = os.open("/dev/full", os.O_WRONLY)
                os.dup2(dev, fd)
                os.close(dev)
            else:   # pragma: no cover - not Linux
                os.close(fd)
                raise OSError(errno.ENOSPC, "No space left on device", tmp)
        return fd, tmp

    out = tmp_path / "full"
    monkeypatch.setattr(io, "_create_temp", full)
    code, _, err = run_main(capsys, "lottery", *TINY, "--out", out)
    one_line(code, err, 3, "level-01", "No space left on device (ENOSPC)", "free some space")
    folder = run_folder(out)
    assert leftovers(folder) == []
    assert not (folder / "seed-0" / "level-01" / "ticket" / store.MANIFEST).exists()
    assert store.Unit(folder / "seed-0" / "level-00" / "ticket").is_done()
    assert not (folder / "results.csv").exists()
    monkeypatch.setattr(io, "_create_temp", real)
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    assert run_main(capsys, "lottery", *TINY, "--out", tmp_path / "ref")[0] == 0
    assert rows(folder) == rows(run_folder(tmp_path / "ref"))


def test_a_unit_folder_that_cannot_be_written_or_deleted_is_one_line(capsys, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    folder = run_folder(out)
    unit = folder / "seed-0" / "level-01" / "ticket"
    (unit / store.MANIFEST).unlink()   # to be recomputed: the commit must clear the files left there
    (unit / "stale.bin").write_bytes(b"left by an earlier attempt")

    def read_only(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    one_line(*run_main(capsys, "lottery", *TINY, "--out", out)[::2], 3, str(unit), "Permission denied")
    monkeypatch.undo()

    def stuck(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(path) / "seed-0"))

    monkeypatch.setattr(store.shutil, "rmtree", stuck)   # --force cannot delete the discarded folder
    one_line(*run_main(capsys, "lottery", *TINY, "--out", out, "--force")[::2], 3,
             "cannot delete the discarded run folder", "chmod -R u+w")


# ------------------------------------------------------------------------------------- corrupt files
def test_show_after_spec_json_was_edited_shows_the_rows_and_says_so(capsys, tmp_path):
    out = tmp_path / "runs"
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    folder = run_folder(out)
    spec = folder / "spec.json"
    spec.write_text(spec.read_text().replace('"lottery"', '"lottery2"', 1))
    code, text, err = run_main(capsys, "show", folder)
    assert code == 0 and "Traceback" not in err
    assert "spec.json" in err and "SHA-256 differs" in err and len(err.strip().splitlines()) == 1
    assert "test_accuracy" in text
    code, text, err = run_main(capsys, "show", folder, "--format", "json")
    assert code == 0 and len(json.loads(text)) == 2


class Planted:
    def __reduce__(self):
        return (Path.write_text, (Path(os.environ["TICKETLAB_PLANTED"]), "pwned"))


def test_a_planted_pickle_with_a_forged_hash_is_one_line_never_loaded(capsys, tmp_path, monkeypatch):
    """final.safetensors of level 0 replaced by a pickle and its manifest entry forged to match: level 1,
    recomputed, needs it: one line naming the file and what to do (exit 3); the pickle never runs."""
    out = tmp_path / "runs"
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    folder = run_folder(out)
    first = rows(folder)
    dense = store.Unit(folder / "seed-0" / "level-00" / "ticket")
    marker = tmp_path / "planted-ran"
    monkeypatch.setenv("TICKETLAB_PLANTED", str(marker))
    data = pickle.dumps(Planted())
    (dense.path / "final.safetensors").write_bytes(data)
    manifest = json.loads((dense.path / store.MANIFEST).read_text())
    manifest["files"]["final.safetensors"] = {"size": len(data), "sha256": io.sha256_bytes(data)}
    (dense.path / store.MANIFEST).write_text(json.dumps(manifest))
    shutil.rmtree(folder / "seed-0" / "level-01")
    code, _, err = run_main(capsys, "lottery", *TINY, "--out", out)
    one_line(code, err, 3, dense.path / "final.safetensors", "not a valid safetensors file", "delete it", "--force")
    assert not marker.exists(), "the pickle ran"
    (dense.path / "final.safetensors").unlink()   # as the message says
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    assert rows(folder) == first and not marker.exists()


@pytest.mark.parametrize("entry", [7, "x", None, [1], {"size": "12", "sha256": "ab"}, {"sha256": "ab"}])
def test_a_manifest_entry_of_the_wrong_type_is_corrupt_and_recomputed(capsys, tmp_path, entry):
    out = tmp_path / "runs"
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    folder = run_folder(out)
    first = rows(folder)
    unit = store.Unit(folder / "seed-0" / "level-01" / "ticket")
    manifest = json.loads((unit.path / store.MANIFEST).read_text())
    manifest["files"]["mask.safetensors"] = entry
    (unit.path / store.MANIFEST).write_text(json.dumps(manifest))
    assert not store.Unit(unit.path).is_done()
    with pytest.raises(io.CorruptFile):
        store.Unit(unit.path).read("result.json")
    run_manifest = json.loads((folder / store.MANIFEST).read_text())
    run_manifest["files"]["results.csv"] = entry
    (folder / store.MANIFEST).write_text(json.dumps(run_manifest))
    code, text, err = run_main(capsys, "show", folder)
    assert code == 0 and "Traceback" not in err and "unfinished run" in text
    stamp = (folder / "seed-0" / "level-00" / "ticket" / "final.safetensors").stat().st_mtime_ns
    assert run_main(capsys, "lottery", *TINY, "--out", out)[0] == 0
    assert store.Unit(unit.path).is_done() and rows(folder) == first
    assert (folder / "seed-0" / "level-00" / "ticket" / "final.safetensors").stat().st_mtime_ns == stamp, \
        "only the unit with the bad entry is recomputed"


def test_a_bug_gets_the_traceback_and_a_line_asking_to_report_it(capsys, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(execute, "execute", broken)
    monkeypatch.setattr("ticketlab.run.executors.execute", broken)
    code, _, err = run_main(capsys, "lottery", *TINY, "--out", tmp_path / "runs")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1] == cli.REPORT_BUG


# ---------------------------------------------------------------------------------------------- umask
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_files_and_folders_honour_the_umask(capsys, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        assert run_main(capsys, "lottery", *TINY, "--out", tmp_path / "runs")[0] == 0
    finally:
        os.umask(old)
    folder = run_folder(tmp_path / "runs")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 10 and folder / ".lock" in files
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(file_mode)}
    assert {oct(p.stat().st_mode & 0o777) for p in [folder, *folder.rglob("*")] if p.is_dir()} == {oct(dir_mode)}


# ----------------------------------------------------------------------------------------------- lock
HOLDER = """
import sys, time
from ticketlab.run.lock import FolderLock
lock = FolderLock.take(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(python, env, folder, seconds=60):
    """A process holding `folder`'s lock (it has printed 'locked')."""
    proc = subprocess.Popen([python, "-c", HOLDER, str(folder), str(seconds)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_command_on_a_locked_folder_refuses_naming_the_holder(capsys, tmp_path, python, cli_env):
    from ticketlab import spec as specs
    from ticketlab.specs.lottery import LotterySpec

    out = tmp_path / "runs"
    argv = ["lottery", *TINY, "--out", out]
    parsed = cli.build_parser({"lottery"}).parse_args([str(a) for a in argv])
    folder = store.Run.folder(out, specs.from_arguments(LotterySpec, parsed, None))
    holder = hold(python, cli_env, folder)
    try:
        code, _, err = run_main(capsys, *argv)
        one_line(code, err, 2, f"{folder} is in use by pid {holder.pid} on ", "-c", "--wait")
        assert sorted(p.name for p in folder.iterdir()) == [".lock"], "the refused command wrote nothing"
        # a sweep over the same folder refuses too
        sweep = tmp_path / "sweep.toml"
        sweep.write_text('experiment = "lottery"\n[base]\ndataset = "synthetic"\nmodel = "mlp"\nsteps = "20it"\n'
                         'batch_size = 100\neval_every = "10it"\nlevels = 1\ncontrols = []\nworkers = 1\n'
                         '[grid]\nwidths = [[16], [8]]\n')
        code, _, err = run_main(capsys, "sweep", sweep, "--out", out, "--no-progress")
        one_line(code, err, 2, f"is in use by pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert run_main(capsys, *argv)[0] == 0, "the kernel released the killed holder's lock"


def test_a_killed_holder_never_blocks_and_forked_children_do_not_keep_the_lock(tmp_path, python, cli_env):
    folder = tmp_path / "run"
    holder = hold(python, cli_env, folder)
    with pytest.raises(lock.Busy, match=f"pid {holder.pid}"):
        lock.FolderLock.take(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    mine = lock.FolderLock.take(folder)   # at once: no stale lock
    info = json.loads((folder / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"]
    # a forked child (a worker) outlives the holder: it dropped its copy at the fork, so the lock goes
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:   # pragma: no cover - the child (os.fork returns here after the at-fork hooks ran)
        os.write(ready_w, b"1")
        time.sleep(5)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    try:
        mine.release()
        lock.FolderLock.take(folder).release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_waiting_follows_a_folder_replaced_by_force(tmp_path):
    """A command waiting for the lock while the holder's --force replaces the folder (and its .lock) ends
    up holding the new folder's lock, after the holder, never beside it."""
    folder = tmp_path / "run"
    first = lock.FolderLock.take(folder)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(lock.FolderLock.take(folder, wait=True)))
    waiter.start()
    time.sleep(0.3)
    os.replace(folder, tmp_path / "trash")   # what Run.open(force=True) does
    folder.mkdir()
    first.follow()
    time.sleep(0.3)
    assert not got, "the waiter must not get the old (replaced) lock file"
    with pytest.raises(lock.Busy):
        lock.FolderLock.take(folder)
    first.release()
    waiter.join(10)
    assert got and lock._is_current(got[0].fd, folder / ".lock")
    got[0].release()


def test_locks_of_many_folders_are_all_or_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    held = lock.FolderLock.take(b)
    with pytest.raises(lock.Busy):
        lock.FolderLocks([b, a])
    lock.FolderLock.take(a).release()   # a was let go again
    held.release()
    with lock.FolderLocks([b, a, a]) as both:
        assert [l.folder for l in both.locks] == [a, b]
    lock.FolderLocks([a, b]).release()


# ---------------------------------------------------------------------------- real commands, heavy
LONG = ["lottery", "--steps", "2000it", "--levels", "1", "--eval-every", "100it", "--checkpoint-every", "50it",
        "--controls", "none", "--no-progress"]


def start(python, env, out, *extra):
    return subprocess.Popen([python, "-m", "ticketlab", *LONG, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def locked_by(out: Path, pid: int, proc, timeout=60) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for f in out.glob("lottery-*/.lock"):
            try:
                if json.loads(f.read_text()).get("pid") == pid:
                    return f.parent
            except ValueError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never took the lock: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.heavy
def test_two_commands_on_one_folder_refuse_or_wait_and_nothing_runs_twice(capsys, tmp_path, python, cli_env, monkeypatch):
    out = tmp_path / "runs"
    first = start(python, cli_env, out, "--workers", "1")
    watchdog = threading.Timer(120, first.kill)
    watchdog.start()
    try:
        folder = locked_by(out, first.pid, first)
        code, _, err = run_main(capsys, *LONG, "--workers", "1", "--out", out)
        one_line(code, err, 2, f"is in use by pid {first.pid}", "ticketlab lottery --steps 2000it")
        commits = []
        real = execute.commit
        monkeypatch.setattr(execute, "commit", lambda *a: commits.append(a[1]) or real(*a))
        code, text, err = run_main(capsys, *LONG, "--workers", "1", "--out", out, "--wait")
        assert first.wait(timeout=60) == 0
        assert code == 0 and f"waiting for {folder}: in use by pid {first.pid}" in err, err
        assert commits == [], "every unit was done by the first command, none computed again"
        first_out = first.stdout.read()
        assert text == first_out, "the same table as the command that computed it"
    finally:
        watchdog.cancel()
        first.kill()
        first.wait()


@pytest.mark.heavy
def test_kill_9_of_the_lock_holder_then_resume_at_once(capsys, tmp_path, python, cli_env):
    """The holder (with forked workers) is killed mid-level; the same command at once is not blocked by
    the lock and ends with the files of an uninterrupted run."""
    assert run_main(capsys, *LONG, "--workers", "1", "--out", tmp_path / "ref")[0] == 0
    out = tmp_path / "killed"
    proc = start(python, cli_env, out, "--workers", "2")
    try:
        folder = locked_by(out, proc.pid, proc)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not list(folder.glob("seed-0/level-*/ticket/checkpoint/MANIFEST.json")):
            time.sleep(0.01)
        assert proc.poll() is None, "finished before the kill; make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert not (folder / "results.csv").exists()
    code, _, err = run_main(capsys, *LONG, "--workers", "1", "--out", out)
    assert code == 0, err
    ref = run_folder(tmp_path / "ref")
    assert rows(folder) == rows(ref)
    for rel in ("seed-0/level-00/ticket", "seed-0/level-01/ticket"):
        for name in ("mask.safetensors", "final.safetensors", "metrics.jsonl"):
            assert (folder / rel / name).read_bytes() == (ref / rel / name).read_bytes(), (rel, name)
