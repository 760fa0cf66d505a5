"""KDAS-ReID: teacher vs searched student over seeds (rank-1, mAP), the temperature rules, and speed.

Quality. One teacher is trained once (seed 0) with the plugin's CPU default; then, for each seed, one
``kd`` run searches the cells (variant ``search``), trains the derived network with KD under each
temperature rule (``kdas``: anneal-to-one, cosine; plus ``--shapes`` ``linear`` / ``exponential``
anneal-to-one variants; ``kdas_const_t``: constant T), ``kdas_logits_only`` (KD on the identity logits
without the default relational term on the embedding) and the no-KD baseline, all from the same teacher.
"best" is the best validation mAP of a stage, with the rank-1 of that epoch.

Speed. Teacher and student embed the same batch of query images on the CPU (one thread per core): a
warm-up, then ``--repeats`` rounds that time every model once per round, in turn (A B A B ...), at batch
1 (latency per image) and batch 64 (throughput). The median is quoted, with the ratio to the student
(the cells searched with seed 0, for 751 identities as in Market-1501).

    .venv/bin/python benchmarks/reid_kdas.py --seeds 3 [--shapes linear exponential] [--set KEY=VALUE]
    .venv/bin/python benchmarks/reid_kdas.py --seeds 3 --without kdas_logits_only  # 18 min shorter
    .venv/bin/python benchmarks/reid_kdas.py --seeds 3 --teacher-run DIR/reid/person/RUN  # a kept teacher
    .venv/bin/python benchmarks/reid_kdas.py --skip-training        # speed only

Prints tables and writes benchmarks/results/reid_kdas.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from bench_common import add_keep_runs, environment, interleaved_seconds, work_dir, write_result
from rich.console import Console
from rich.table import Table

from kd_reid.models import build_model
from kd_reid.search_space import Genotype
from kdcore.config import read_toml, resolve
from kdcore.engine import count_parameters, fit
from kdcore.plugins import get_registry
from kdcore.report import read_metrics

ANNEAL_SHAPES = ("linear", "exponential", "cosine")


def stage_of(variant: str) -> str:
    """The stage label of a variant's student (``no-KD`` is the run's baseline)."""
    return "baseline" if variant == "no-KD" else f"{variant}/student"


def best_record(run_dir: Path, stage: str) -> dict:
    """The validation record of ``stage`` with the highest mAP."""
    val = [r for r in read_metrics(run_dir) if r.get("split") == "val" and r.get("stage") == stage]
    return max(val, key=lambda r: r["mAP"])


def extra_variants(config: dict, shapes: list[str]) -> dict:
    """``kdas_<shape>``: the derived network with anneal-to-one T of another shape; with feature hints
    configured (the default's relational term on the embedding), ``kdas_logits_only`` without them."""
    anneal = config["distill"]["temperature"]
    extra = {f"kdas_{shape}": {"distill": {"temperature": {**anneal, "shape": shape}}} for shape in shapes}
    if config["distill"]["hints"]:
        extra["kdas_logits_only"] = {"distill": {"hints": []}}
    return extra


def train_teacher(args: argparse.Namespace, task, quiet: Console, common: dict) -> Path:
    """Train the teacher once (seed 0) in a run of its own; return that run's directory."""
    teacher_config = resolve(task.defaults, sets=[*args.sets, "distill.baseline=false"], overrides=common)
    teacher_config["variants"], teacher_config["primary_variant"] = {}, ""
    teacher_config["student"] = {**teacher_config["student"], "arch": "resnet18", "epochs": 1}
    return fit(teacher_config, console=quiet).run_dir


def teacher_of(run_dir: Path) -> tuple[dict, str]:
    """The teacher of a run: ``(summary, best checkpoint)``; errors name what the run lacks."""
    checkpoint = run_dir / "checkpoints" / "teacher_best.pt"
    summary_path = run_dir / "report" / "summary.json"
    if not checkpoint.is_file() or not summary_path.is_file():
        raise SystemExit(f"--teacher-run {run_dir}: expected {checkpoint} and {summary_path} (a kd reid run)")
    config = read_toml(run_dir / "config.toml")
    best, stage = best_record(run_dir, "teacher"), json.loads(summary_path.read_text())["stages"]["teacher"]
    summary = {
        "arch": config["teacher"]["arch"],
        "mAP": best["mAP"],
        "rank1": best["rank1"],
        "parameters": stage["parameters"],
        "seconds": stage["seconds"],
        "run": str(run_dir),
    }
    return summary, str(checkpoint)


def quality(args: argparse.Namespace, task, quiet: Console, work: Path) -> tuple[dict, list[dict], str]:
    common = {"plugin": "reid", "task": "person", "out_dir": str(work), "train": {"progress": False}}
    teacher_run = Path(args.teacher_run) if args.teacher_run else train_teacher(args, task, quiet, common)
    teacher_summary, checkpoint = teacher_of(teacher_run)
    rows, genotype = [], ""
    for seed in range(args.seeds):
        overrides = {**common, "seed": seed, "teacher": {"checkpoint": checkpoint}}
        config = resolve(task.defaults, sets=args.sets, overrides=overrides)
        extra = extra_variants(config, args.shapes)
        config["variants"].update({name: extra[name] for name in args.variants if name in extra})
        run = fit(config, console=quiet)
        genotype = genotype or str(run.run_dir / "genotype_search.json")
        stages = run.summary["stages"]
        for variant in args.variants:
            record = best_record(run.run_dir, stage_of(variant))
            rows.append(
                {
                    "seed": seed,
                    "variant": variant,
                    "mAP": record["mAP"],
                    "rank1": record["rank1"],
                    "final_mAP": stages[stage_of(variant)]["final_metric"],
                    "parameters": stages[stage_of(variant)]["parameters"],
                    "seconds": stages[stage_of(variant)]["seconds"],
                    "genotype": json.loads(Path(run.run_dir / "genotype_search.json").read_text()),
                }
            )
    return teacher_summary, rows, genotype


def speed(args: argparse.Namespace, config: dict, genotype: Genotype) -> list[dict]:
    info = {"num_classes": 751, "genotypes": {"search": genotype.to_dict()}}  # Market-1501's 751 ids
    names = list(dict.fromkeys([config["teacher"]["arch"], "resnet50", "kdas"]))
    models = {name: build_model(name, info, config).eval() for name in names}
    options = config["options"]
    rows = []
    for batch in (1, 64):
        images = torch.randn(batch, 3, int(options["height"]), int(options["width"]))
        with torch.inference_mode():
            seconds = interleaved_seconds(
                {name: partial(models[name], images) for name in names}, args.repeats
            )
        for name in names:
            rows.append(
                {
                    "arch": name,
                    "batch": batch,
                    "parameters": count_parameters(models[name]),
                    "ms_per_image": 1000 * seconds[name] / batch,
                    "times_student": seconds[name] / seconds["kdas"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--shapes", nargs="*", default=[], choices=[s for s in ANNEAL_SHAPES if s != "linear"]
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument(
        "--without",
        nargs="*",
        default=[],
        metavar="VARIANT",
        help="distilled variants not to train (e.g. kdas_logits_only); kdas and kdas_const_t always run",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-training", action="store_true", help="measure speed only")
    parser.add_argument("--genotype", help="genotype file for --skip-training (default: the last results')")
    parser.add_argument(
        "--teacher-run",
        metavar="RUN_DIR",
        help="reuse the teacher of this run (one kept with --keep-runs) instead of training one",
    )
    parser.add_argument("--out", default="benchmarks/results/reid_kdas.json")
    add_keep_runs(parser)
    args = parser.parse_args()

    task = get_registry().get_task("reid", "person")
    config = resolve(task.defaults, sets=args.sets)
    unknown = set(args.without) - set(extra_variants(config, args.shapes))
    if unknown:
        parser.error(f"--without {' '.join(sorted(unknown))}: not an extra variant of this config")
    extra = [name for name in extra_variants(config, args.shapes) if name not in args.without]
    args.variants = ["no-KD", "kdas", "kdas_const_t", *extra]
    started = time.perf_counter()
    result: dict = {
        "benchmark": "reid_kdas",
        **environment(),
        "config": {k: config[k] for k in ("teacher", "student", "distill", "options", "variants")},
        "overrides": args.sets,
    }
    genotype_file = args.genotype
    if not args.skip_training:
        work = work_dir(args, "reid")
        teacher, rows, genotype_file = quality(args, task, Console(file=io.StringIO()), work)
        result["teacher"], result["seeds"] = teacher, rows
        means = {}
        for variant in args.variants:
            mine = [r for r in rows if r["variant"] == variant]
            means[variant] = {k: statistics.mean(r[k] for r in mine) for k in ("mAP", "rank1", "final_mAP")}
            means[variant]["stdev"] = statistics.stdev(r["mAP"] for r in mine) if len(mine) > 1 else 0.0
            means[variant]["parameters"] = mine[0]["parameters"]
            means[variant]["seconds"] = statistics.mean(r["seconds"] for r in mine)
        result["means"] = means
        by_seed = [{r["variant"]: r["mAP"] for r in rows if r["seed"] == s} for s in range(args.seeds)]
        result["wins"] = {
            "kdas_over_no_kd": sum(s["kdas"] > s["no-KD"] for s in by_seed),
            "anneal_over_constant": sum(s["kdas"] >= s["kdas_const_t"] for s in by_seed),
        }
        table = Table(
            title=f"best mAP over {args.seeds} seeds; teacher {teacher['arch']} ({teacher['parameters']:,} "
            f"parameters): mAP {teacher['mAP']:.4f}, rank-1 {teacher['rank1']:.4f}"
        )
        for column in ("student", "parameters", "mAP", "± sd", "rank-1", "final mAP", "s / stage"):
            table.add_column(column, justify="right")
        for variant, m in means.items():
            table.add_row(
                variant,
                f"{m['parameters']:,}",
                *(f"{m[k]:.4f}" for k in ("mAP", "stdev", "rank1", "final_mAP")),
                f"{m['seconds']:.0f}",
            )
        Console().print(table)
        print(json.dumps(result["wins"]))
    if genotype_file is not None:
        genotype = Genotype.load(genotype_file)
    else:  # --skip-training: the cells of the last full run
        genotype = Genotype.from_dict(json.loads(Path(args.out).read_text())["genotype"], source=args.out)
    result["genotype"] = genotype.to_dict()
    result["speed"] = speed(args, config, genotype)
    table = Table(title=f"CPU inference, {config['options']['height']} x {config['options']['width']} images")
    for column in ("arch", "batch", "parameters", "ms / image", "x student"):
        table.add_column(column, justify="right")
    for row in result["speed"]:
        table.add_row(
            row["arch"],
            str(row["batch"]),
            f"{row['parameters']:,}",
            f"{row['ms_per_image']:.2f}",
            f"{row['times_student']:.2f}",
        )
    Console().print(table)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
