"""Sensor transfer with few new-sensor images: no KD vs KD vs KD with an annealed alpha (and selective KD).

One ``kd`` run on the plugin's embedded default (digits as RGB camera -> thermal): the teacher trains once
on the old sensor; then, for each label seed (which N images are labelled, spread over the classes) and
recipe, a student trains on the new sensor from N labelled images and, for the KD recipes, the teacher's
soft targets on the old-sensor twin of every training image. All students start from the same
initialisation and train the same number of steps. Final-epoch test accuracy on the held-out new-sensor
images; mean, standard deviation and per-seed wins over the seeds.

    .venv/bin/python benchmarks/sensor_fewshot.py [--labels 10] [--seeds 5] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/sensor_fewshot.py --anneal cosine:1:0.5 --anneal linear:1:0  # more rules

Prints a table and writes benchmarks/results/sensor_fewshot.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from bench_common import add_keep_runs, environment, work_dir, write_result
from rich.console import Console
from rich.table import Table

from kd_sensor import DEFAULTS, RECIPES
from kd_sensor.report import variant_name
from kdcore.config import resolve
from kdcore.engine import fit


def anneal_recipe(spec: str) -> tuple[str, dict]:
    """``shape:start:end`` (e.g. ``cosine:1:0.5``) as a recipe name and its variant change."""
    shape, start, end = spec.split(":")
    name = f"anneal_{shape}_{start}_{end}".replace(".", "p")
    return name, {"distill": {"alpha": {"name": shape, "start": float(start), "end": float(end)}}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", type=int, default=10, help="labelled new-sensor images (N)")
    parser.add_argument("--seeds", type=int, default=5, help="label seeds")
    parser.add_argument("--anneal", action="append", default=[], help="an extra alpha rule shape:start:end")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--out", default="benchmarks/results/sensor_fewshot.json")
    add_keep_runs(parser)
    args = parser.parse_args()

    recipes = dict(RECIPES)
    recipes.update(anneal_recipe(spec) for spec in args.anneal)
    variants = {}
    for seed in range(args.seeds):
        for recipe, change in recipes.items():
            options = {**change.get("options", {}), "labels": args.labels, "label_seed": seed}
            variants[variant_name(args.labels, seed, recipe)] = {**change, "options": options}
    work = work_dir(args, "sensor")
    overrides = {"plugin": "sensor", "task": "transfer", "out_dir": str(work), "train": {"progress": False}}
    config = resolve(DEFAULTS, sets=args.sets, overrides=overrides)
    config["variants"], config["primary_variant"] = variants, "s0_kd"
    started = time.perf_counter()
    run = fit(config, console=Console(file=io.StringIO()))
    stages = run.summary["stages"]
    accuracy = {
        recipe: [
            stages[f"{variant_name(args.labels, seed, recipe)}/student"]["final_metric"]
            for seed in range(args.seeds)
        ]
        for recipe in recipes
    }
    baseline = accuracy["no_kd"]
    rows = []
    for recipe, values in accuracy.items():
        rows.append(
            {
                "recipe": recipe,
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "over_no_kd": statistics.mean(values) - statistics.mean(baseline),
                "wins_over_kd": sum(v >= k for v, k in zip(values, accuracy["kd"], strict=True)),
                "per_seed": values,
            }
        )
    teacher = stages["teacher"]
    table = Table(
        title=f"new-sensor test accuracy with N = {args.labels}, {args.seeds} label seeds "
        f"(teacher on the old sensor: {teacher['best_metric']:.3f})"
    )
    for column in ("recipe", "mean", "± sd", "- no KD", f"seeds >= KD (of {args.seeds})"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["recipe"],
            f"{row['mean']:.3f}",
            f"{row['sd']:.3f}",
            f"{row['over_no_kd']:+.3f}",
            str(row["wins_over_kd"]),
        )
    Console().print(table)
    result = {
        "benchmark": "sensor_fewshot",
        **environment(),
        "labels": args.labels,
        "seeds": args.seeds,
        "overrides": args.sets,
        "recipes": {name: change for name, change in recipes.items()},
        "teacher_accuracy": teacher["best_metric"],
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "run_dir": str(run.run_dir),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
