"""What every benchmark script records beside its figures, and how it writes them."""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

from kdcore import hookimpl
from kdcore.checkpoint import atomic_write_text
from kdcore.plugins import DEFAULT_PLUGINS, Registry


def environment() -> dict[str, Any]:
    """Date, machine, CPU model and vector instructions, GPU (if any), torch version and CPU threads: the
    context a figure needs. The vector instructions matter: the same VM type has come with AVX2-only and
    with AVX-512 hosts, and CPU ratios between networks differed between them (BENCHMARKS.md, liverct)."""
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cpu_model() -> str:
    """The processor's model name as the OS reports it (``/proc/cpuinfo`` on Linux), or ``"unknown"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def add_keep_runs(parser: argparse.ArgumentParser) -> None:
    """The ``--keep-runs DIR`` option of every benchmark that trains: see :func:`work_dir`."""
    parser.add_argument(
        "--keep-runs",
        metavar="DIR",
        help="keep the runs it trains (checkpoints, reports) under DIR; default: a temporary folder, removed",
    )


def work_dir(args: argparse.Namespace, name: str) -> Path:
    """Where a benchmark's runs go: ``--keep-runs DIR`` (kept, and said so), else a temporary folder that
    is removed when the script ends, also after an error."""
    if args.keep_runs:
        path = Path(args.keep_runs)
        path.mkdir(parents=True, exist_ok=True)
        print(f"runs are kept in {path}")
        return path
    path = Path(tempfile.mkdtemp(prefix=f"kd-bench-{name}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``result`` as indented JSON at ``path`` (atomically, parents created)."""
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads (None: torch's default). One thread gives the steadiest
    figures on a shared machine; CPU seconds then measure the work itself."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)


def training_row(steps: int, seconds: float, cpu_seconds: float, final_accuracy: float) -> dict[str, float]:
    """One timed training run as the speed comparisons record it: steps per second (wall), the wall and
    CPU seconds it took, and where the student ended."""
    return {
        "steps_per_s": steps / seconds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps": steps,
        "final_accuracy": final_accuracy,
    }


def speed_ratios(
    ours: Sequence[Mapping[str, float]], theirs: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Our throughput over theirs, round by round (rows of :func:`training_row`, paired in order): by
    wall time (``ratios``) and per CPU second of the process (``cpu_ratios``), each with its median."""
    pairs = list(zip(ours, theirs, strict=True))
    wall = [o["steps_per_s"] / t["steps_per_s"] for o, t in pairs]
    cpu = [(o["steps"] / o["cpu_seconds"]) / (t["steps"] / t["cpu_seconds"]) for o, t in pairs]
    return {
        "ratio_median": statistics.median(wall),
        "ratios": wall,
        "cpu_ratio_median": statistics.median(cpu),
        "cpu_ratios": cpu,
    }


def print_speed_ratios(label: str, ratios: Mapping[str, Any]) -> None:
    """Print what :func:`speed_ratios` measured, as ``<label> steps per second: median ... (rounds: ...)``
    and the same per CPU second."""
    for unit, key in (("second", "ratios"), ("CPU second", "cpu_ratios")):
        rounds = ", ".join(f"{r:.3f}" for r in ratios[key])
        print(f"{label} steps per {unit}: median {statistics.median(ratios[key]):.3f} (rounds: {rounds})")


@dataclass
class StageClock:
    """Seconds of every epoch (``(stage, epoch, seconds)``) and of every stage, recorded by hooks: wall
    seconds in ``stages`` and the process's CPU seconds in ``cpu`` (all threads; unlike wall time, not
    lengthened by other processes on the machine)."""

    epochs: list[tuple[str, int, float]] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def clear(self) -> None:
        self.epochs.clear()
        self.stages.clear()
        self.cpu.clear()

    def epoch_seconds(self, stage: str) -> list[float]:
        return [seconds for name, _, seconds in self.epochs if name == stage]


def timing_registry(clock: StageClock) -> Registry:
    """kdcore's default registry plus a plugin ``kd_bench_timing`` that fills ``clock``: epoch times from
    ``kd_epoch_start`` / ``kd_epoch_end``, stage wall and CPU times from ``kd_fit_start`` / ``kd_fit_end``."""
    module = types.ModuleType("kd_bench_timing")
    started: dict[tuple[str, str], float] = {}

    @hookimpl
    def kd_fit_start(run):
        started[run.stage, "stage"] = time.perf_counter()
        started[run.stage, "cpu"] = time.process_time()

    @hookimpl
    def kd_fit_end(run, summary):
        clock.stages[run.stage] = time.perf_counter() - started[run.stage, "stage"]
        clock.cpu[run.stage] = time.process_time() - started[run.stage, "cpu"]

    @hookimpl
    def kd_epoch_start(run, epoch):
        started[run.stage, "epoch"] = time.perf_counter()

    @hookimpl
    def kd_epoch_end(run, epoch, metrics):
        clock.epochs.append((run.stage, epoch, time.perf_counter() - started[run.stage, "epoch"]))

    for hook in (kd_fit_start, kd_fit_end, kd_epoch_start, kd_epoch_end):
        setattr(module, hook.__name__, hook)
    sys.modules["kd_bench_timing"] = module
    return Registry(builtins=(*DEFAULT_PLUGINS, "kd_bench_timing"), load_entry_points=False)


def synchronize() -> None:
    """Wait for the CUDA work queued so far, when CUDA is in use (host clocks time it then)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_seconds(
    runs: Mapping[str, Callable[[], object]], rounds: int = 10, calls: int = 1
) -> dict[str, float]:
    """Median seconds of one call of each function, over ``rounds`` interleaved rounds (every function
    ``calls`` times per round, after one warm-up call each): side-by-side timings where a slow moment of
    the machine hits every contender. Wrap the call in ``torch.inference_mode()`` for inference. Where
    CUDA is in use the clock stops only after the device has finished the calls' work."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            synchronize()
            started = time.perf_counter()
            for _ in range(calls):
                run()
            synchronize()
            times[name].append((time.perf_counter() - started) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def load_teacher(task: Any, config: Mapping[str, Any], path: str, device: torch.device) -> torch.nn.Module:
    """The teacher checkpoint at ``path`` rebuilt with ``task.build_model``, on ``device``, in eval mode."""
    from kdcore.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    teacher = task.build_model(state["arch"], state["data_info"], config)
    teacher.load_state_dict(state["model"])
    return teacher.to(device).eval()


KERNEL_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


@contextlib.contextmanager
def profiled(out_dir: Path, name: str, steps: int) -> Iterator[dict[str, Any]]:
    """Profile the block with ``torch.profiler`` (CPU, and CUDA where in use) and yield a dict that is
    filled when it ends: operator calls and CUDA kernel launches per training step (``steps``), self CPU
    time, and on CUDA every host sync by where the code asked for it (``torch.cuda.set_sync_debug_mode``:
    a sync stalls the device queue, the cost that a CPU run cannot show). The operator table, sorted by
    self CPU time, goes to ``out_dir/<name>.txt``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    summary: dict[str, Any] = {}
    syncs: collections.Counter[str] = collections.Counter()
    shown = warnings.showwarning

    not_ours = (str(Path(torch.__file__).parent), warnings.__file__, __file__)

    def count_sync(message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        ours = [f for f in traceback.extract_stack() if not f.filename.startswith(not_ours)]
        syncs[" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(ours[-2:]))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = count_sync
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with profile(activities=activities) as prof:
                yield summary
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    events = prof.key_averages()
    aten = sum(e.count for e in events if e.key.startswith("aten::"))
    launches = sum(e.count for e in events if e.key in KERNEL_LAUNCHES)
    summary.update(
        steps=steps,
        aten_calls_per_step=round(aten / steps, 1),
        kernel_launches_per_step=round(launches / steps, 1) if cuda else None,
        self_cpu_s=round(sum(e.self_cpu_time_total for e in events) / 1e6, 3),
        syncs=dict(syncs.most_common()),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    table = events.table(sort_by="self_cpu_time_total", row_limit=-1, max_name_column_width=60)
    atomic_write_text(out_dir / f"{name}.txt", table + "\n")


@contextlib.contextmanager
def python_profiled(path: Path, top: int = 60) -> Iterator[None]:
    """Profile the block's Python calls with ``cProfile`` (wall clock, this thread) and add the ``top``
    functions by cumulative time to the end of ``path``: where the time goes, waiting included (for a
    writer thread, for the device at a host sync), which ``torch.profiler``'s operator table does not show."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
    text = io.StringIO()
    # the report's plots (matplotlib, after the stages) would fill the table
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats("^(?!.*(matplotlib|PIL))", top)
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, before + "\n" + text.getvalue())
