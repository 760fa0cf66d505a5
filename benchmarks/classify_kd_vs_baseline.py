"""Does distillation help? The classify plugin's default student with and without KD, over several seeds.

One teacher is trained once (seed 0); then for each seed the student is distilled from it and the same
architecture is trained from the same initialisation without a teacher (the run's ``baseline`` stage).
"best" is the best validation accuracy over the epochs (the checkpoint ``best.pt`` keeps), "final" the
accuracy after the last epoch, which no selection on the validation set flatters.

    .venv/bin/python benchmarks/classify_kd_vs_baseline.py --seeds 5 [--set student.arch="mlp"]

Prints a table and writes benchmarks/results/classify_kd_vs_baseline.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from bench_common import add_keep_runs, environment, work_dir, write_result
from rich.console import Console
from rich.table import Table

from kdcore.config import resolve
from kdcore.engine import fit
from kdcore.plugins import get_registry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--out", default="benchmarks/results/classify_kd_vs_baseline.json")
    add_keep_runs(parser)
    args = parser.parse_args()

    task = get_registry().get_task("classify", "digits")
    quiet = Console(file=io.StringIO())
    work = work_dir(args, "classify")
    common = {"plugin": "classify", "task": "digits", "out_dir": str(work), "train": {"progress": False}}
    started = time.perf_counter()
    teacher_run = fit(
        resolve(task.defaults, sets=[*args.sets, "distill.baseline=false"], overrides=common), console=quiet
    )
    teacher_ckpt = str(teacher_run.run_dir / "checkpoints" / "teacher_best.pt")
    rows = []
    for seed in range(args.seeds):
        overrides = {**common, "seed": seed, "teacher": {"checkpoint": teacher_ckpt}}
        run = fit(resolve(task.defaults, sets=args.sets, overrides=overrides), console=quiet)
        stages = run.summary["stages"]
        rows.append(
            {
                "seed": seed,
                "kd": stages["student"]["best_metric"],
                "no_kd": stages["baseline"]["best_metric"],
                "kd_final": stages["student"]["final_metric"],
                "no_kd_final": stages["baseline"]["final_metric"],
            }
        )
    config = resolve(task.defaults, sets=args.sets, overrides=common)
    kd = [r["kd"] for r in rows]
    no_kd = [r["no_kd"] for r in rows]
    result = {
        "benchmark": "classify_kd_vs_baseline",
        **environment(),
        "teacher": {
            "arch": config["teacher"]["arch"],
            "accuracy": teacher_run.summary["stages"]["teacher"]["best_metric"],
        },
        "student": config["student"]["arch"],
        "temperature": config["distill"]["temperature"],
        "alpha": config["distill"]["alpha"],
        "seeds": rows,
        "kd_mean": statistics.mean(kd),
        "no_kd_mean": statistics.mean(no_kd),
        "kd_final_mean": statistics.mean(r["kd_final"] for r in rows),
        "no_kd_final_mean": statistics.mean(r["no_kd_final"] for r in rows),
        "kd_wins": sum(r["kd"] > r["no_kd"] for r in rows),
        "ties": sum(r["kd"] == r["no_kd"] for r in rows),
        "seconds": round(time.perf_counter() - started, 1),
    }
    teacher = result["teacher"]
    title = (
        f"digits: {result['student']} student, {teacher['arch']} teacher (val acc {teacher['accuracy']:.3f})"
    )
    table = Table(title=title)
    for column in ("seed", "KD best", "no-KD best", "KD final", "no-KD final"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["seed"]), *(f"{r[k]:.4f}" for k in ("kd", "no_kd", "kd_final", "no_kd_final")))
    means = ("kd_mean", "no_kd_mean", "kd_final_mean", "no_kd_final_mean")
    table.add_row("mean", *(f"{result[k]:.4f}" for k in means))
    Console().print(table)
    print(
        f"KD better in {result['kd_wins']}/{len(rows)} seeds ({result['ties']} ties), {result['seconds']} s"
    )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
