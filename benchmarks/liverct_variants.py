"""Liver CT: no-KD, KD, TAKD and GTAN students side by side over seeds, and student vs teacher speed.

Quality. One teacher is trained once (seed 0) with the plugin's CPU default; then, for each seed, one
``kd`` run trains the default's three distilled variants (``gtan``, ``kd``, ``takd``) from that teacher
and the no-KD baseline, all from the same student initialisation. "best" is the best validation mean
dice (liver, tumour) over the validated epochs, "final" the dice after the last epoch. "test" scores the
checkpoint that "best" picked (the teacher's too) on ``--test-cases`` held-out phantom cases drawn with
another seed (``kd eval RUN --data TEST``): the validation split has 4 cases and "best" is the maximum
over all validated epochs on them, so it flatters every model; the test score is not chosen on its data.

Speed. Each architecture segments the same fixed-size volume with the sliding window used in evaluation
(``--volume``, after resampling; default 96 x 96 x 64 voxels), on the CPU (one thread per core) or with
``--device cuda`` on a GPU (``--amp float16`` or ``bfloat16`` under autocast): a warm-up, then
``--repeats`` rounds that time every model once per round, in turn (A B C A B C ...). The table quotes
the median seconds per case, the ratio to the student, and the floating-point operations of one pass
(the ratio a compute-bound device would approach; small 3-D convolutions on a CPU are not). Every model
runs as evaluation and ``kd predict`` run it (on a CPU with the sub-pixel rewrite of
``kd_liverct.fast_inference``) at the evaluation's windows per pass and at each of
``--windows-per-pass`` (the outputs are the same; only the batching differs), and "as built" (MONAI's
network unchanged) at the evaluation's windows per pass.

    .venv/bin/python benchmarks/liverct_variants.py --seeds 3 [--set student.epochs=80]
    .venv/bin/python benchmarks/liverct_variants.py --seeds 2 --first-seed 3  # two more seeds, 3 and 4
    .venv/bin/python benchmarks/liverct_variants.py --set variants.kd_a3.distill.alpha=0.3  # one more
    python benchmarks/liverct_variants.py --skip-training --device cuda --amp float16 --volume 256 256 128

Prints tables and writes benchmarks/results/liverct_variants.json (liverct_speed.json with
``--skip-training``).
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
from click.testing import CliRunner
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from kd_liverct import phantom_root
from kd_liverct.fast_inference import inference_network
from kd_liverct.metrics import sliding_window_logits
from kd_liverct.models import build_model, count_parameters
from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli
from kdcore.config import resolve
from kdcore.engine import AMP_DTYPES, fit, select_device
from kdcore.plugins import get_registry
from kdcore.report import read_metrics


def stage_of(variant: str) -> str:
    """The stage label of a variant's student (``no-KD`` is the run's baseline)."""
    return "baseline" if variant == "no-KD" else f"{variant}/student"


def best_record(run_dir: Path, stage: str) -> dict:
    """The validation record of ``stage`` with the highest mean dice."""
    val = [r for r in read_metrics(run_dir) if r.get("split") == "val" and r.get("stage") == stage]
    return max(val, key=lambda r: r["dice"])


def test_scores(run_dir: Path, test_root: Path, stages: list[str]) -> dict[str, dict]:
    """The best checkpoint of each of ``stages`` scored on every case of ``test_root`` with
    ``kd eval --data``: ``{"teacher": {"dice": ..., "dice_liver": ..., "dice_tumour": ...}, ...}``."""
    scores = {}
    for path in sorted((run_dir / "checkpoints").glob("*best.pt")):
        stage = str(load_checkpoint(path)["stage"])
        if stage not in stages:
            continue
        args = [
            "eval",
            str(run_dir),
            "--data",
            str(test_root),
            "--checkpoint",
            str(path.relative_to(run_dir)),
        ]
        result = CliRunner().invoke(cli, [*args, "--device", "cpu", "--json"])
        if result.exit_code != 0:
            raise RuntimeError(f"kd {' '.join(args)} failed: {result.output}")
        scores[stage] = json.loads(result.stdout)
    return scores


def dice_record(metrics: dict, name: str) -> dict:
    """``metrics``' mean, liver and tumour dice as ``{name: ..., name_liver: ..., name_tumour: ...}``."""
    return {
        name: metrics["dice"],
        f"{name}_liver": metrics["dice_liver"],
        f"{name}_tumour": metrics["dice_tumour"],
    }


def quality(args: argparse.Namespace, task, quiet: Console, work: Path) -> tuple[dict, list[dict]]:
    common = {"plugin": "liverct", "task": "liver", "out_dir": str(work), "train": {"progress": False}}
    teacher_config = resolve(task.defaults, sets=[*args.sets, "distill.baseline=false"], overrides=common)
    teacher_config["variants"] = {}  # the teacher alone: one (plain KD) student, no baseline
    teacher_config["student"]["epochs"] = 1
    test_root = phantom_root({**teacher_config["options"], "phantom_cases": args.test_cases}, seed=1)
    teacher_run = fit(teacher_config, console=quiet)
    teacher_dir = teacher_run.run_dir
    checkpoint = str(teacher_dir / "checkpoints" / "teacher_best.pt")
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        overrides = {**common, "seed": seed, "teacher": {"checkpoint": checkpoint}}
        run = fit(resolve(task.defaults, sets=args.sets, overrides=overrides), console=quiet)
        stages = run.summary["stages"]
        tested = test_scores(run.run_dir, test_root, [stage_of(v) for v in args.variants])
        for variant in args.variants:
            stage = stage_of(variant)
            rows.append(
                {
                    "seed": seed,
                    "variant": variant,
                    **dice_record(best_record(run.run_dir, stage), "best"),
                    "final": stages[stage]["final_metric"],
                    "seconds": stages[stage]["seconds"],
                    **dice_record(tested[stage], "test"),
                }
            )
    teacher_summary = {
        **dice_record(best_record(teacher_dir, "teacher"), "best"),
        "seconds": teacher_run.summary["stages"]["teacher"]["seconds"],
        **dice_record(test_scores(teacher_dir, test_root, ["teacher"])["teacher"], "test"),
    }
    return teacher_summary, rows


def wins(rows: list[dict], key: str) -> dict[str, int]:
    """In how many seeds each ordering of the target holds, scored on ``key`` ("best", "final", "test")."""
    seeds = sorted({r["seed"] for r in rows})
    by_seed = [{r["variant"]: r[key] for r in rows if r["seed"] == seed} for seed in seeds]
    return {
        "kd_over_no_kd": sum(s["kd"] > s["no-KD"] for s in by_seed),
        "gtan_over_kd": sum(s["gtan"] >= s["kd"] for s in by_seed),
        "takd_over_kd": sum(s["takd"] >= s["kd"] for s in by_seed),
    }


def gflops(model: torch.nn.Module, volume: torch.Tensor, options: dict) -> float:
    """Floating-point operations (in 1e9) of one sliding-window pass over ``volume``, by the network as
    built (the sub-pixel rewrite multiplies some zeros; they are not the network's arithmetic)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        sliding_window_logits(model, volume, options)
    return counter.get_total_flops() / 1e9


def speed(args: argparse.Namespace, config: dict, device: torch.device) -> list[dict]:
    """Seconds per case of each architecture: at the evaluation's windows per pass, at each of
    ``args.windows_per_pass``, and as built (without the rewrite) at the evaluation's windows per pass."""
    info = {"in_channels": 1, "num_classes": 3}
    names = [
        config["teacher"]["arch"],
        "unet_teacher",
        "unet_assistant",
        config["student"]["arch"],
        "unet_30k",
    ]
    names = list(dict.fromkeys(names))
    models = {name: build_model(name, info, config).eval().to(device) for name in names}
    volume = torch.rand(1, 1, *args.volume).to(device)  # drawn on the CPU: the same case on any device
    options = config["options"]
    windows = int(options["sw_batch_size"])
    per_pass = sorted({windows, *args.windows_per_pass})
    dtype = AMP_DTYPES.get(args.amp)
    runs = {}
    for name, model in models.items():
        fast = inference_network(model, device)  # once, as evaluation and `kd predict` do
        for count in per_pass:
            batched = {**options, "sw_batch_size": count}
            runs[name, count] = partial(sliding_window_logits, fast, volume, batched)
        if fast is not model:  # elsewhere nothing is rewritten: "as built" is the same run
            runs[name, "as built"] = partial(sliding_window_logits, model, volume, options)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        seconds = interleaved_seconds(runs, args.repeats)
    rows = []
    for name in names:
        by_windows = {count: seconds[name, count] for count in per_pass}
        best = min(by_windows, key=by_windows.get)
        rows.append(
            {
                "arch": name,
                "parameters": count_parameters(models[name]),
                "gflops_per_case": gflops(models[name], volume, options),
                "seconds_per_case": by_windows[windows],
                "seconds_by_windows_per_pass": by_windows,
                "best_windows_per_pass": best,
                "best_seconds_per_case": by_windows[best],
                "seconds_per_case_as_built": seconds.get((name, "as built"), by_windows[windows]),
            }
        )
    student = next(row for row in rows if row["arch"] == config["student"]["arch"])
    for row in rows:
        for key in ("seconds_per_case", "best_seconds_per_case", "seconds_per_case_as_built"):
            row[key.replace("seconds_per_case", "times_student")] = row[key] / student[key]
    return rows


def speed_table(result: dict, args: argparse.Namespace, device: torch.device) -> Table:
    windows = result["config"]["options"]["sw_batch_size"]
    table = Table(
        title=f"{device} sliding-window inference, amp {args.amp}, volume {' x '.join(map(str, args.volume))}"
    )
    table.add_column("arch", no_wrap=True)
    for column in (
        "parameters",
        "GFLOP / case",
        f"s / case ({windows} / pass)",
        "x student",
        "best s / case (windows / pass)",
        "x student",
        "as built: s / case",
        "x student",
    ):
        table.add_column(column, justify="right")
    for row in result["speed"]:
        table.add_row(
            row["arch"],
            f"{row['parameters']:,}",
            f"{row['gflops_per_case']:.2f}",
            f"{row['seconds_per_case']:.3f}",
            f"{row['times_student']:.2f}",
            f"{row['best_seconds_per_case']:.3f} ({row['best_windows_per_pass']})",
            f"{row['best_times_student']:.2f}",
            f"{row['seconds_per_case_as_built']:.3f}",
            f"{row['times_student_as_built']:.2f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="students' seeds are first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--volume", type=int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--windows-per-pass",
        type=int,
        nargs="+",
        default=[16, 32],
        help="windows per forward pass to time besides the evaluation's own (options.sw_batch_size)",
    )
    parser.add_argument(
        "--test-cases",
        type=int,
        default=16,
        help="held-out phantom cases (seed 1; training uses seed 0's) that score each best checkpoint",
    )
    parser.add_argument("--skip-training", action="store_true", help="measure speed only")
    parser.add_argument("--device", default="cpu", help="where the speed part runs: cpu, cuda, auto")
    parser.add_argument("--amp", choices=("off", *AMP_DTYPES), default="off", help="autocast dtype for speed")
    parser.add_argument(
        "--out",
        help="result file (default benchmarks/results/liverct_variants.json, or liverct_speed.json with "
        "--skip-training, so a speed run does not replace the quality results)",
    )
    add_keep_runs(parser)
    args = parser.parse_args()
    if args.out is None:
        args.out = f"benchmarks/results/liverct_{'speed' if args.skip_training else 'variants'}.json"

    task = get_registry().get_task("liverct", "liver")
    config = resolve(task.defaults, sets=args.sets)
    args.variants = ["no-KD", *config["variants"]]  # the default's three, and any added with --set
    device = select_device(args.device)
    started = time.perf_counter()
    result: dict = {
        "benchmark": "liverct_variants",
        **environment(),
        "config": {k: config[k] for k in ("teacher", "student", "distill", "options")},
        "overrides": args.sets,
        "volume": args.volume,
        "speed_device": str(device),
        "speed": speed(args, config, device),
    }
    table = speed_table(result, args, device)
    Console().print(table)

    if not args.skip_training:
        work = work_dir(args, "liverct")
        teacher, rows = quality(args, task, Console(file=io.StringIO()), work)
        result["teacher"] = teacher
        result["seeds"] = rows
        keys = ("best", "best_liver", "best_tumour", "final", "test", "test_liver", "test_tumour")
        means = {}
        for variant in args.variants:
            mine = [r for r in rows if r["variant"] == variant]
            means[variant] = {k: statistics.mean(r[k] for r in mine) for k in keys}
            for key in ("best", "test"):
                spread = statistics.stdev(r[key] for r in mine) if len(mine) > 1 else 0.0
                means[variant][f"{key}_stdev"] = spread
            means[variant]["seconds"] = statistics.mean(r["seconds"] for r in mine)
        result["means"] = means
        result["wins"] = {key: wins(rows, key) for key in ("best", "final", "test")}
        table = Table(
            title=f"mean dice over {args.seeds} seeds; teacher {config['teacher']['arch']}: "
            f"validation best {teacher['best']:.4f}, test {teacher['test']:.4f} (liver "
            f"{teacher['test_liver']:.3f}, tumour {teacher['test_tumour']:.3f}; {args.test_cases} cases)"
        )
        columns = ("val best", "± sd", "final", "test", "± sd", "test liver", "test tumour")
        for column in ("variant", *columns, "s / stage"):
            table.add_column(column, justify="right")
        for variant, m in means.items():
            shown = ("best", "best_stdev", "final", "test", "test_stdev", "test_liver", "test_tumour")
            table.add_row(variant, *(f"{m[k]:.4f}" for k in shown), f"{m['seconds']:.0f}")
        Console().print(table)
        print(json.dumps(result["wins"]))
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
