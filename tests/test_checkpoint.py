"""Atomic writes and safe checkpoint loads."""

from __future__ import annotations

import os
import re
import stat
import sys
import threading

import pytest
import torch

from kdcore.checkpoint import (
    WRITER_NICENESS,
    BackgroundWriter,
    CheckpointError,
    EpochCheckpoints,
    atomic_directory,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
    snapshot,
    write_once,
)


def test_an_atomic_write_gets_an_ordinary_files_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "config.toml", "x = 1\n")
    finally:
        os.umask(umask)
    assert path.read_text() == "x = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "metrics.json", "old")

    def fail(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_checkpoints_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "epoch": 4, "arch": "linear"})
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and state["arch"] == "linear" and "format" in state
    torch.testing.assert_close(state["model"]["weight"], model.weight.detach())


def test_unreadable_checkpoints_are_errors_that_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "missing.pt"))):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape("garbage.pt could not be read")):
        load_checkpoint(garbage)
    no_model = save_checkpoint(tmp_path / "nomodel.pt", {"epoch": 1})
    with pytest.raises(
        CheckpointError, match=re.escape("nomodel.pt is not a kdcore checkpoint (no 'model' entry)")
    ):
        load_checkpoint(no_model)


def test_an_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    with atomic_directory(tmp_path / "tree") as staging:
        (staging / "a.txt").write_text("a")
        assert not (tmp_path / "tree").exists()  # nothing visible until the block ends
    assert (tmp_path / "tree" / "a.txt").read_text() == "a"

    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "broken") as staging:
        (staging / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no root, no staging folder

    with (
        pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "tree"))),
        atomic_directory(tmp_path / "tree"),
    ):
        pass
    assert [p.name for p in (tmp_path / "tree").iterdir()] == ["a.txt"]


def test_write_once_builds_a_data_set_folder_once_and_never_half(tmp_path):
    root = tmp_path / "data" / "set"
    complete = lambda folder: (folder / "done.txt").is_file()  # noqa: E731
    calls = []

    def write(staging):
        calls.append(staging)
        (staging / "done.txt").write_text("ok")

    assert write_once(root, write, complete, "a test set") == root
    assert (root / "done.txt").read_text() == "ok" and len(calls) == 1
    assert write_once(root, write, complete, "a test set") == root and len(calls) == 1  # reused

    def interrupted(staging):
        (staging / "half.txt").write_text("half")
        raise KeyboardInterrupt

    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        write_once(other, interrupted, complete, "a test set")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no root, no staging left

    def raced(staging):  # another process publishes a complete set while this one writes
        write(staging)
        other.mkdir()
        (other / "done.txt").write_text("theirs")

    assert write_once(other, raced, complete, "a test set") == other
    assert (other / "done.txt").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "other"]

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(
        FileExistsError, match=r"photos already exists and is not an empty folder or a test set"
    ):
        write_once(foreign, write, complete, "a test set")
    assert [p.name for p in foreign.iterdir()] == ["mine.jpg"]


def test_a_snapshot_is_not_changed_by_later_training():
    weight = torch.ones(3)
    state = {"model": {"w": weight}, "history": [1, {"lr": [0.1]}], "pair": (weight, "x"), "n": None}
    copied = snapshot(state)
    weight.add_(1.0)
    state["history"][1]["lr"].append(0.2)
    assert torch.equal(copied["model"]["w"], torch.ones(3))
    assert torch.equal(copied["pair"][0], torch.ones(3)) and copied["pair"][1] == "x"
    assert copied["history"] == [1, {"lr": [0.1]}] and copied["n"] is None
    assert copied["model"]["w"].device.type == "cpu" and not copied["model"]["w"].requires_grad


def test_a_snapshot_copies_a_list_of_plain_numbers_instead_of_sharing_it():
    state = {"rng": {"python": [3, list(range(625)), None]}}
    copied = snapshot(state)
    state["rng"]["python"][1][0] = -1
    assert copied["rng"]["python"][1][:2] == [0, 1] and len(copied["rng"]["python"][1]) == 625


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are Linux's")
def test_the_background_writer_runs_its_jobs_at_the_lowest_priority():
    seen: list[int] = []
    writer = BackgroundWriter()
    writer.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    writer.wait()
    assert seen == [WRITER_NICENESS]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < WRITER_NICENESS  # not the caller's


def test_the_background_writer_runs_jobs_one_at_a_time_in_order(tmp_path):
    release = threading.Event()
    order: list[str] = []

    def slow() -> None:
        release.wait(timeout=10)
        order.append("first")
        save_checkpoint(tmp_path / "a.pt", {"model": {}, "epoch": 1})

    writer = BackgroundWriter()
    writer.submit(slow)
    assert not (tmp_path / "a.pt").exists()  # the caller did not wait for the write
    threading.Timer(0.2, release.set).start()
    writer.submit(lambda: order.append("second"))  # waits for the first job before it starts
    writer.wait()
    assert order == ["first", "second"]
    assert load_checkpoint(tmp_path / "a.pt")["epoch"] == 1


def test_the_background_writer_waits_cleanly_after_ctrl_c_inside_thread_start(monkeypatch):
    def interrupted(self) -> None:  # Ctrl-C before the thread ran: Thread.start raised, nothing started
        raise KeyboardInterrupt

    writer = BackgroundWriter()
    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", interrupted)
        with pytest.raises(KeyboardInterrupt):
            writer.submit(lambda: None)
    writer.wait()  # the engine's clean-up after the interrupt: no "cannot join thread before it is started"
    ran = threading.Event()
    writer.submit(ran.set)  # and the writer works again
    writer.wait()
    assert ran.is_set()


def test_the_background_writer_raises_a_jobs_error_in_the_caller_once(tmp_path):
    writer = BackgroundWriter()

    def fails() -> None:
        raise OSError(f"{tmp_path / 'resume.pt'}: no space left on device")

    writer.submit(fails)
    with pytest.raises(OSError, match="no space left"):
        writer.wait()
    writer.wait()  # reported once; the writer is usable again
    writer.submit(fails)
    with pytest.raises(OSError, match="no space left"):
        writer.submit(lambda: None)  # the next submit reports it before starting anything


class CountingWriter(BackgroundWriter):
    def __init__(self) -> None:
        super().__init__()
        self.jobs = 0

    def submit(self, job) -> None:
        self.jobs += 1
        super().submit(job)


def epoch_files(tmp_path, every_s: float) -> tuple[EpochCheckpoints, CountingWriter, list]:
    writer = CountingWriter()
    paths = [tmp_path / name for name in ("resume.pt", "last.pt", "best.pt")]
    return EpochCheckpoints(writer, *paths, every_s=every_s), writer, paths


def test_epoch_checkpoints_write_what_waits_at_the_end_each_epoch_once(tmp_path):
    files, writer, (resume, last, best) = epoch_files(tmp_path, every_s=3600)
    epochs = [(True, True), (True, True), (True, False), (False, False)]  # (validated, improved)
    for epoch, (validated, improved) in enumerate(epochs):
        files.add({"model": {}, "epoch": epoch}, validated, improved, ended=epoch == len(epochs) - 1)
    writer.wait()
    assert writer.jobs == 1  # nothing before the end of the stage
    assert [load_checkpoint(p)["epoch"] for p in (resume, last, best)] == [3, 2, 1]
    assert not resume.samefile(last) and not last.samefile(best)

    files.add({"model": {}, "epoch": 4}, validated=True, improved=True, ended=False)
    files.flush()  # what Ctrl-C does
    files.flush()  # nothing waits any more: no second job
    writer.wait()
    assert writer.jobs == 2
    assert resume.samefile(last) and last.samefile(best)  # one epoch: one file, three names
    assert load_checkpoint(best)["epoch"] == 4


def test_epoch_checkpoints_write_every_epoch_at_an_interval_of_zero_and_without_a_resume_state(tmp_path):
    files, writer, (resume, last, best) = epoch_files(tmp_path, every_s=0)
    files.add({"model": {}, "epoch": 0}, validated=True, improved=True, ended=False)
    files.add({"model": {}, "epoch": 1}, validated=False, improved=False, ended=False)
    writer.wait()
    assert writer.jobs == 2
    assert [load_checkpoint(p)["epoch"] for p in (resume, last, best)] == [1, 0, 0]

    writer = CountingWriter()
    files = EpochCheckpoints(writer, None, tmp_path / "rank0_last.pt", tmp_path / "rank0_best.pt", every_s=0)
    files.add({"model": {}, "epoch": 1}, validated=True, improved=False, ended=False)
    writer.wait()
    assert writer.jobs == 1 and load_checkpoint(tmp_path / "rank0_last.pt")["epoch"] == 1
    assert not (tmp_path / "rank0_best.pt").exists()


def test_epoch_checkpoints_write_the_resume_state_after_the_files_it_names(tmp_path, monkeypatch):
    real_replace = os.replace

    def dies_at_the_resume_state(source, target):  # the process dies as resume.pt is put in place
        if os.path.basename(target) == "resume.pt":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", dies_at_the_resume_state)
    files, writer, (resume, last, best) = epoch_files(tmp_path, every_s=3600)
    files.add({"model": {}, "epoch": 0}, validated=True, improved=True, ended=False)
    files.add({"model": {}, "epoch": 1}, validated=True, improved=False, ended=True)
    with pytest.raises(KeyboardInterrupt):
        writer.wait()
    assert not resume.exists()  # the state that would name best epoch 0 is not there ...
    assert load_checkpoint(best)["epoch"] == 0  # ... but its best file is
    assert load_checkpoint(last)["epoch"] == 1


def test_partial_writes_of_a_killed_process_are_removed_and_nothing_else(tmp_path):
    kept = [tmp_path / "resume.pt", tmp_path / "best.pt", tmp_path / "notes.tmp"]
    partial = [tmp_path / ".resume.pt.k2x9q1ab.tmp", tmp_path / ".best.pt.0a1b2c3d.tmp"]
    for path in kept + partial:
        path.write_bytes(b"x")
    assert remove_partial_writes(tmp_path) == sorted(partial)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
