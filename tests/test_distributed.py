"""Two CPU processes with gloo, as ``torchrun --nproc_per_node 2`` starts them: equal weights, one writer."""

from __future__ import annotations

import io
import os
import socket
import sys
import tempfile
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console
from tiny import tiny_task

from kdcore import distributed, hookimpl
from kdcore.config import resolve
from kdcore.engine import fit
from kdcore.plugins import DEFAULT_PLUGINS, Registry
from kdcore.report import read_metrics

TASK = tiny_task("ddp", student={"epochs": 3}, teacher={"epochs": 2})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world_size: int, port: int, out: str, sets: list[str]) -> None:
    """One process of the launch: the environment torchrun would set, then an ordinary ``fit``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    module = types.ModuleType("kdt_ddp")

    @hookimpl
    def kd_register_tasks(register):
        register(TASK)

    @hookimpl
    def kd_fit_end(run, summary):  # every process leaves its own copy of the stage's final weights
        torch.save(run.student.state_dict(), Path(out) / f"{run.stage}_rank{rank}.pt")

    module.kd_register_tasks, module.kd_fit_end = kd_register_tasks, kd_fit_end
    sys.modules["kdt_ddp"] = module
    registry = Registry(builtins=(*DEFAULT_PLUGINS, "kdt_ddp"), load_entry_points=False)
    overrides = {"plugin": "kdt_ddp", "task": "ddp", "out_dir": str(Path(out) / "runs"), "run_name": "r"}
    fit(resolve(TASK.defaults, sets=sets, overrides=overrides), registry, console=Console(file=io.StringIO()))
    torch.distributed.destroy_process_group()


def launch(tmp_path: Path, sets: list[str] = ()) -> None:
    """Two processes on the CPU, also where GPUs are present (one GPU could not take two NCCL ranks).
    torch's spawn leaves an error file per process in the temporary folder: here, ``tmp_path``."""
    sets = ["device=cpu", *sets]
    with mock.patch.object(tempfile, "tempdir", str(tmp_path)):
        mp.spawn(worker, args=(2, free_port(), str(tmp_path), sets), nprocs=2, join=True)


def test_two_processes_end_with_identical_weights_and_one_run_directory(tmp_path):
    launch(tmp_path)
    for stage in ("teacher", "student", "baseline"):
        rank0 = torch.load(tmp_path / f"{stage}_rank0.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"{stage}_rank1.pt", weights_only=True)
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), stage
    run_dir = tmp_path / "runs" / "kdt_ddp" / "ddp" / "r"
    records = read_metrics(run_dir)
    # 45 items: 23 per process, in batches of 15: 2 steps per epoch, each logged once (rank 0 only).
    student = [r for r in records if r["split"] == "train" and r["stage"] == "student"]
    assert [r["step"] for r in student] == list(range(3 * 2))
    assert [r["stage"] for r in records if r["split"] == "stage"] == ["teacher", "student", "baseline"]
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "report" / "summary.json").is_file()
    assert not (run_dir / "checkpoints" / "resume.pt").exists()


def test_what_torchrun_does_not_support_yet_is_refused(tmp_path):
    with pytest.raises(
        Exception, match="process"
    ):  # the worker's ValueError surfaces as a ProcessRaisedException
        launch(tmp_path, ["train.teacher_cache=true"])


def test_cpu_processes_join_with_gloo_on_a_machine_with_gpus(monkeypatch):
    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", backends.append)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    where = distributed.init(torch.device("cpu"))
    assert backends == ["gloo"] and (where.rank, where.world_size, where.local_rank) == (1, 2, 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    distributed.init(torch.device("cuda"))
    assert backends == ["gloo", "nccl"]


def test_more_processes_than_gpus_on_a_node_is_refused_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "init_process_group", pytest.fail)
    with pytest.raises(
        RuntimeError, match=r"LOCAL_RANK=1 but this node has 1 CUDA device\(s\).*--device cpu"
    ):
        distributed.init(torch.device("cuda"))
