"""Teacher-output cache: student epochs with cached teacher outputs against the live teacher, on the digits.

A large teacher (``resnet18`` by default) teaches a small student (``mlp``). Each round runs the same
``kd`` student stage twice, once with ``train.teacher_cache = false`` and once with ``true``, in
alternating order (A B, B A, ...), from the same teacher checkpoint (trained once, first). The epoch times
of the student stage are taken by a ``kd_epoch_start`` / ``kd_epoch_end`` hook; the table compares the
median epoch time from the second epoch on (the first epoch fills the cache) and the final student
accuracy of both, which must be equal: cached outputs are the teacher's own.

    .venv/bin/python benchmarks/teacher_cache.py [--rounds 3] [--set teacher.arch='cnn_large']

Prints a table and writes benchmarks/results/teacher_cache.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from bench_common import StageClock, add_keep_runs, environment, timing_registry, work_dir, write_result
from rich.console import Console
from rich.table import Table

from kdcore.config import resolve
from kdcore.engine import fit

QUIET = Console(file=io.StringIO())
SETS = [
    "teacher.arch='resnet18'",
    "student.arch='mlp'",
    "teacher.epochs=3",
    "student.epochs=8",
    "distill.baseline=false",
    "train.progress=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--out", default="benchmarks/results/teacher_cache.json")
    add_keep_runs(parser)
    args = parser.parse_args()

    clock = StageClock()
    registry = timing_registry(clock)
    task = registry.get_task("classify", "digits")
    work = work_dir(args, "cache")
    common = {
        "plugin": "classify",
        "task": "digits",
        "out_dir": str(work),
        "with_plugins": ["kd_bench_timing"],
    }
    started = time.perf_counter()
    first = fit(resolve(task.defaults, sets=[*SETS, *args.sets], overrides=common), registry, console=QUIET)
    checkpoint = str(first.run_dir / "checkpoints" / "teacher_best.pt")
    results: dict[bool, list[dict]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for cached in (False, True) if round_ % 2 == 0 else (True, False):
            clock.clear()
            sets = [*SETS, *args.sets, f"train.teacher_cache={str(cached).lower()}"]
            overrides = {**common, "teacher": {"checkpoint": checkpoint}}
            result = fit(resolve(task.defaults, sets=sets, overrides=overrides), registry, console=QUIET)
            student = clock.epoch_seconds("student")
            results[cached].append(
                {
                    "first_epoch_s": student[0],
                    "later_epoch_s": statistics.median(student[1:]),
                    "final_accuracy": result.summary["stages"]["student"]["final_metric"],
                }
            )
    live, cached = results[False], results[True]
    later = {
        k: statistics.median(r["later_epoch_s"] for r in v) for k, v in (("live", live), ("cached", cached))
    }
    report = {
        "benchmark": "teacher_cache",
        **environment(),
        "sets": [*SETS, *args.sets],
        "rounds": args.rounds,
        "live": live,
        "cached": cached,
        "speedup_later_epochs": later["live"] / later["cached"],
        "same_accuracy": all(
            a["final_accuracy"] == b["final_accuracy"] for a, b in zip(live, cached, strict=True)
        ),
        "seconds": round(time.perf_counter() - started, 1),
    }
    table = Table(title="student epochs on the digits, live teacher vs cached outputs (median over rounds)")
    for column in ("teacher", "first epoch s", "later epochs s", "final accuracy"):
        table.add_column(column, justify="right")
    for name, rows in (("live", live), ("cached", cached)):
        table.add_row(
            name,
            f"{statistics.median(r['first_epoch_s'] for r in rows):.3f}",
            f"{statistics.median(r['later_epoch_s'] for r in rows):.3f}",
            f"{rows[0]['final_accuracy']:.4f}",
        )
    Console().print(table)
    print(
        f"later epochs {report['speedup_later_epochs']:.2f}x faster; same accuracy: {report['same_accuracy']}"
    )
    write_result(args.out, report)


if __name__ == "__main__":
    main()
