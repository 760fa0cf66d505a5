"""Engine overhead in instructions: kd's student stage and the plain loop's, counted by valgrind.

``engine_overhead.py`` times the two sides, and on a shared machine its rounds spread over 10 to 40
points, more than the differences it is after. This script counts instead: each side trains the same
student stage as there (same recipe, teacher, batches and loss) in a process of its own under valgrind's
callgrind, which counts the CPU instructions the stage executes, in every thread, from ``kd_fit_start``
to ``kd_fit_end`` for kd and over the epochs for the plain loop. Two runs of the same code agree to
about 0.1 %, so a change to the engine can be measured in one run. An instruction is not a time: a
cache miss or a wait costs time and no instructions, and arithmetic kernels differ (valgrind runs
AVX2 code at most). What the count does measure is the work each side gives the host: for the
host-bound stand-in (``--teacher mlp --student mlp``, the default here) the engine's own work.

Under valgrind a stage runs about 50 times slower. The engine's clock-driven parts are set to do what
they do in a native run of a stage of a fraction of a second: no progress bar (it appears after
``BAR_REDRAW_S``) and the epochs' files written once, at the end (``train.checkpoint_every_s``).
Each side trains once unmarked (warm-up), then once counted.

    python benchmarks/engine_instructions.py [--teacher mlp] [--student mlp] [--epochs 10]
        [--batch-size 64] [--plain-batches both|items|gathered]

Needs valgrind (``apt install valgrind``). Prints a table and writes
benchmarks/results/engine_instructions.json; the sides run two at a time, about 12 minutes on 2 CPUs.
The convolutional recipe of ``engine_overhead.py`` (``--teacher cnn_large --student cnn_small``) is too
slow under valgrind: its two warm-up stages had not ended after 20 minutes.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_common import environment, write_result
from engine_overhead import plain_loop, recipe_sets
from rich.console import Console
from rich.table import Table

from kdcore import engine, hookimpl
from kdcore.config import resolve
from kdcore.plugins import DEFAULT_PLUGINS, Registry

#: valgrind dumps its counts and starts from zero on entering this libc function, which nothing else in
#: a training stage calls: the counted side calls it where its stage starts and where it ends.
MARK = "getppid"
#: The plain loops each ``--plain-batches`` counts beside kd.
SIDES = {
    "items": ("plain-items",),
    "gathered": ("plain-gathered",),
    "both": ("plain-items", "plain-gathered"),
}


def counted_sets(args: argparse.Namespace) -> list[str]:
    """The ``--set`` values of the counted recipe: ``engine_overhead.py``'s, with the epochs' files written
    at the end of the stage, as a native run of a stage this short writes them."""
    return [
        *recipe_sets(args.teacher, args.student, args.epochs, args.batch_size),
        "train.checkpoint_every_s=1000000",
    ]


def recipe(args: argparse.Namespace, out_dir: Path, plugins: list[str]) -> tuple[Registry, dict]:
    """The registry (with ``plugins``, registered under their module names) and the resolved config."""
    registry = Registry(builtins=(*DEFAULT_PLUGINS, *plugins), load_entry_points=False)
    task = registry.get_task("classify", "digits")
    sets = counted_sets(args)
    overrides = {"plugin": "classify", "task": "digits", "out_dir": str(out_dir), "device": "cpu"}
    overrides["with_plugins"] = plugins
    if args.teacher_checkpoint:
        overrides["teacher"] = {"checkpoint": args.teacher_checkpoint}
    return registry, resolve(task.defaults, sets=sets, overrides=overrides)


def child(args: argparse.Namespace) -> None:
    """One side, run under valgrind: a warm-up stage, then the counted one between two marks."""
    torch.set_num_threads(1)
    engine.BAR_REDRAW_S = 1e9  # no bar: a native stage this short ends before the bar would appear
    counted = [False]
    marker = types.ModuleType("kd_bench_mark")

    @hookimpl
    def kd_fit_start(run):
        if counted[0] and run.stage == "student":
            os.getppid()

    @hookimpl
    def kd_fit_end(run, summary):
        if counted[0] and run.stage == "student":
            os.getppid()

    marker.kd_fit_start, marker.kd_fit_end = kd_fit_start, kd_fit_end
    sys.modules[marker.__name__] = marker
    out = Path(tempfile.mkdtemp(prefix="kd-bench-instructions-"))
    registry, config = recipe(args, out, [marker.__name__])
    task = registry.get_task("classify", "digits")
    for run in range(2):
        counted[0] = run == 1
        if args.child == "kd":
            engine.fit(dict(config), registry, console=Console(file=io.StringIO(), force_terminal=True))
        else:
            plain_out = out / f"plain-{run}"
            plain_out.mkdir()
            mark = os.getppid if counted[0] else None
            plain_loop(task, config, args.teacher_checkpoint, plain_out, args.child == "plain-gathered", mark)


def count(side: str, args: argparse.Namespace, dumps: Path) -> int:
    """Run ``side`` under callgrind; the instructions between its two marks (valgrind's second dump)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--dump-before={MARK}",
        f"--callgrind-out-file={dumps / side}.%p",
        sys.executable,
        __file__,
        "--child",
        side,
        "--teacher-checkpoint",
        args.teacher_checkpoint,
        *("--teacher", args.teacher, "--student", args.student),
        *("--epochs", str(args.epochs), "--batch-size", str(args.batch_size)),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    stage = list(dumps.glob(f"{side}.*.2"))
    if done.returncode != 0 or len(stage) != 1:
        raise SystemExit(f"{side} under valgrind failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    totals = re.search(r"^totals: (\d+)", stage[0].read_text(), re.MULTILINE)
    if totals is None:
        raise SystemExit(f"{stage[0]} holds no totals line")
    return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="mlp")
    parser.add_argument("--student", default="mlp")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--plain-batches", choices=tuple(SIDES), default="both")
    parser.add_argument("--out", default="benchmarks/results/engine_instructions.json")
    parser.add_argument("--child", choices=("kd", "plain-items", "plain-gathered"), help=argparse.SUPPRESS)
    parser.add_argument("--teacher-checkpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    try:
        version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("valgrind is not installed (apt install valgrind)") from None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bench-instructions-") as work:
        registry, config = recipe(args, Path(work), [])
        teacher = engine.fit(dict(config), registry, console=Console(file=io.StringIO()))
        args.teacher_checkpoint = str(teacher.run_dir / "checkpoints" / "teacher_best.pt")
        dumps = Path(work) / "callgrind"
        dumps.mkdir()
        sides = ("kd", *SIDES[args.plain_batches])
        with ThreadPoolExecutor(max_workers=max(1, min(len(sides), os.cpu_count() or 1))) as pool:
            counts = dict(zip(sides, pool.map(lambda side: count(side, args, dumps), sides), strict=True))
        task = registry.get_task("classify", "digits")
        steps = args.epochs * math.ceil(len(task.build_data(config).train) / args.batch_size)
    table = Table(title=f"Student stage, {args.student} from {args.teacher}, {steps} steps: CPU instructions")
    for column in ("side", "instructions", "per step", "kd / side"):
        table.add_column(column, justify="right")
    for side, total in counts.items():
        table.add_row(side, f"{total:,}", f"{total / steps:,.0f}", f"{counts['kd'] / total:.3f}")
    Console().print(table)
    report = {
        "benchmark": "engine_instructions",
        **environment(),
        "valgrind": version.stdout.strip(),
        "sets": counted_sets(args),
        "steps": steps,
        "instructions": counts,
        "kd_over_side": {side: counts["kd"] / total for side, total in counts.items() if side != "kd"},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
