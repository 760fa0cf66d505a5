"""kdcore against torchdistill: the same vanilla-KD (Hinton) recipe trained by both, side by side.

First a numerical check of the two KD losses: the same random student/teacher logits and labels go through
torchdistill's criterion (``WeightedSumLoss`` with one ``KDLoss`` term, built by its loss registry) and
through kdcore's, ``(1 - alpha) CE + alpha soft_target_kl`` as ``kdcore.engine`` combines them with
classify's supervised loss, PyTorch's ``cross_entropy`` (``soft_target_kl`` includes the T^2).
torchdistill's ``KDLoss`` is ``a CE + (1 - a) T^2 KL``: its ``alpha`` weights the hard term, so
kdcore's alpha maps to ``alpha = 1 - alpha`` there. The check covers the recipe's T and alpha and two
asymmetric settings (which would catch a swapped alpha), losses and gradients; a difference above 1e-5
exits with status 1.

Then the recipe, in both frameworks: classify's digits (kdcore's ``task.build_data``), a ``cnn_large``
teacher (``--teacher``) trained once by ``kd`` and loaded into both, a ``cnn_small`` student
(``--student``) built by ``task.build_model`` from the same seed (equal initial weights), Adam at the
task's learning rate, batches of 64 drawn in the same order (the same seeded generator for the sampler
and the loader), T = 4, alpha = 0.5, full precision on both (``train.amp = false``: torchdistill's box
has no autocast of its own), and after every epoch the same validation (classify's ``evaluate`` on the
held-out digits). kdcore runs ``fit`` with its defaults otherwise (a metrics line every 10 steps, the
progress bar drawn into a buffer, last/best checkpoints and the resume state at most every 10 s and at
the end of the stage), timed from ``kd_fit_start`` to ``kd_fit_end`` of the student stage.
torchdistill runs its ``DistillationBox`` (``get_distillation_box`` with a config dict) in the loop of
its ``examples/torchvision/image_classification.py``: ``pre_epoch_process``, then per batch
``forward_process`` and ``post_forward_process`` under its ``MetricLogger`` (loss and lr every step, a
line formatted every 10 for the root logger, which stays at WARNING: nothing is printed), validation,
``save_ckpt`` when the accuracy improves, ``post_epoch_process``; timed from the start of the first epoch
to the end of the last. The teacher is put in eval mode by hand on the torchdistill side: its box never
sets the teacher's mode (kdcore does), and its example leaves it in train mode.

After a warm-up run of each (not counted), every seed runs each side ``--rounds`` times, the order
alternating (A B, B A, ...). Reported per seed: steps per second of each (median over rounds), their
ratio kdcore / torchdistill (median over that seed's rounds), and the final student accuracy of each;
then the median ratio over all rounds and the accuracy of each side over the seeds (mean, spread). The
ratio is also given per CPU second of the process (``time.process_time``), which other processes on a
shared machine do not lengthen; ``--threads 1`` makes it the steadiest figure.

    .venv/bin/python benchmarks/torchdistill_compare.py [--seeds 3] [--epochs 10] [--rounds 2] [--threads N]
        [--teacher-epochs 12] [--teacher cnn_large] [--student cnn_small] [--device auto|cpu|cuda]

``--teacher mlp --student mlp --threads 1`` is the CPU stand-in for a GPU loop with small models (as in
``engine_overhead.py``): its steps are about 1 ms of operator dispatch, so each framework's host work
outside the model shows in the ratio as it does on a GPU.

Needs torchdistill (``pip install -e '.[bench]'``). Prints a table and writes
benchmarks/results/torchdistill_compare.json.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import (
    StageClock,
    environment,
    load_teacher,
    print_speed_ratios,
    set_threads,
    speed_ratios,
    timing_registry,
    training_row,
    write_result,
)
from rich.console import Console
from rich.table import Table
from torch.utils.data import RandomSampler, SequentialSampler

from kdcore.config import resolve
from kdcore.engine import fit, pin_memory, select_device
from kdcore.losses import soft_target_kl
from kdcore.tasks import Task

try:
    from torchdistill.common.main_util import save_ckpt, set_seed
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.losses.registry import get_high_level_loss
    from torchdistill.misc.log import MetricLogger
except ImportError:
    get_distillation_box = None

TEMPERATURE, ALPHA = 4.0, 0.5  # kdcore's convention: (1 - ALPHA) CE + ALPHA KL T^2
BATCH_SIZE = 64
LOG_EVERY = 10  # kdcore's train.log_every default; torchdistill's log_freq here
TOLERANCE = 1e-5
SIDES = ("kdcore", "torchdistill")


def kdcore_loss(student, teacher, targets, temperature: float, alpha: float) -> torch.Tensor:
    """The total loss of a distilled step in ``kdcore.engine._train_step`` with the default KD term and
    the default supervised loss (``Task.supervised_loss``, which classify keeps)."""
    soft = soft_target_kl(student, teacher, temperature)  # T^2 included
    return (1 - alpha) * F.cross_entropy(student, targets) + alpha * soft


def torchdistill_criterion(temperature: float, alpha: float) -> dict[str, Any]:
    """torchdistill's criterion config for kdcore's ``(temperature, alpha)``: its KDLoss weights CE by
    its ``alpha`` and ``T^2 KL`` by ``1 - alpha``, so kdcore's alpha is its ``1 - alpha``."""
    io_ = {"student_module_path": ".", "student_module_io": "output"}
    io_ |= {"teacher_module_path": ".", "teacher_module_io": "output"}
    kwargs = {**io_, "temperature": temperature, "alpha": 1 - alpha, "reduction": "batchmean"}
    kd = {"criterion": {"key": "KDLoss", "kwargs": kwargs}, "weight": 1.0}
    return {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": kd}}}


def loss_difference() -> float:
    """Max absolute difference of the two losses and of their gradients on random logits."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for temperature, alpha in ((TEMPERATURE, ALPHA), (2.0, 0.9), (1.0, 0.2)):
        student = (3 * torch.randn(64, 10, generator=generator)).requires_grad_()
        teacher = 3 * torch.randn(64, 10, generator=generator)
        targets = torch.randint(0, 10, (64,), generator=generator)
        ours = kdcore_loss(student, teacher, targets, temperature, alpha)
        criterion = get_high_level_loss(torchdistill_criterion(temperature, alpha))
        io_dict = {"student": {".": {"output": student}}, "teacher": {".": {"output": teacher}}}
        theirs = criterion(io_dict, {}, targets)
        grads = [torch.autograd.grad(loss, student)[0] for loss in (ours, theirs)]
        worst = max(worst, float((ours - theirs).abs().detach()), float((grads[0] - grads[1]).abs().max()))
    return worst


def kdcore_run(registry, config: dict[str, Any], clock: StageClock, steps: int) -> dict[str, float]:
    """The student stage of ``kd``'s ``fit`` (``steps`` in all), timed by the ``kd_bench_timing`` hooks."""
    clock.clear()
    console = Console(file=io.StringIO(), force_terminal=True, width=120)  # the bar is drawn
    result = fit(dict(config), registry, console=console)
    accuracy = result.summary["stages"]["student"]["final_metric"]
    return training_row(steps, clock.stages["student"], clock.cpu["student"], accuracy)


def box_config(config: dict[str, Any], device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """torchdistill's train config for the recipe: kdcore's loaders (same seeded shuffling), optimizer and
    epochs, a frozen teacher and the KD criterion."""
    data, student = config["data"], config["student"]
    adam = {"lr": student["lr"], "weight_decay": student["weight_decay"]}  # kdcore's Adam, as configured
    loader = {"num_workers": data["num_workers"], "pin_memory": pin_memory(device, data["num_workers"])}
    shuffled = {"class_or_func": RandomSampler, "kwargs": {"generator": generator}}
    return {
        "num_epochs": student["epochs"],
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": shuffled,
            "kwargs": {**loader, "batch_size": data["batch_size"], "generator": generator},
        },
        "val_data_loader": {
            "dataset_id": "val",
            "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
            "kwargs": {**loader, "batch_size": data["eval_batch_size"]},
        },
        # torchdistill 1.x has no default forward_proc: model(inputs) must be named
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "Adam", "kwargs": adam},
        "criterion": torchdistill_criterion(TEMPERATURE, ALPHA),
    }


def torchdistill_run(task: Task, config: dict[str, Any], teacher_path: str, out: Path) -> dict[str, float]:
    """The same student trained by torchdistill's distillation box, in its example's loop."""
    device = select_device(config["device"])
    data = task.build_data(config)
    teacher = load_teacher(task, config, teacher_path, device)  # eval mode: the box never sets it
    set_seed(config["seed"])  # as kdcore reseeds before it builds a stage's model
    student = task.build_model(config["student"]["arch"], data.info, config).to(device)
    generator = torch.Generator().manual_seed(config["seed"])
    datasets = {"train": data.train, "val": data.val}
    train_config = box_config(config, device, generator)
    box = get_distillation_box(teacher, student, datasets, train_config, device, None, False, 1)
    best, steps, value = 0.0, 0, math.nan
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        logger = MetricLogger(delimiter="  ")
        for inputs, targets, supp_dict in logger.log_every(box.train_data_loader, LOG_EVERY, f"[{epoch}]"):
            inputs, targets = inputs.to(device), targets.to(device)
            loss = box.forward_process(inputs, targets, supp_dict)
            box.post_forward_process(loss=loss)
            current = loss.item()
            logger.update(loss=current, lr=box.optimizer.param_groups[0]["lr"])
            if not math.isfinite(current):
                raise FloatingPointError(f"torchdistill: the loss is {current} at epoch {epoch}")
            steps += 1
        value = task.evaluate(student, box.val_data_loader, device, config)[task.main_metric]
        if value > best:
            best = value
            save_ckpt(student, box.optimizer, box.lr_scheduler, best, None, str(out / "best.pt"))
        box.post_epoch_process()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    box.clean_modules()
    return training_row(steps, seconds, cpu, value)


def summarise(rows: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    """Per seed: median steps/s of each side, their median ratio, mean final accuracy; then the median
    ratio over all rounds and each side's accuracy over the seeds."""

    def kdcore_over_torchdistill(seed: int | None = None) -> dict[str, Any]:
        ours, theirs = (
            [r for r in rows if r["side"] == side and seed in (None, r["seed"])] for side in SIDES
        )
        return speed_ratios(ours, theirs)

    per_seed = []
    for seed in range(seeds):
        entry: dict[str, Any] = {"seed": seed, "ratio": kdcore_over_torchdistill(seed)["ratio_median"]}
        for side in SIDES:
            mine = [r for r in rows if r["side"] == side and r["seed"] == seed]
            entry[f"{side}_steps_per_s"] = statistics.median(r["steps_per_s"] for r in mine)
            entry[f"{side}_accuracy"] = statistics.fmean(r["final_accuracy"] for r in mine)
        per_seed.append(entry)
    accuracy = {}
    for side in SIDES:
        values = [entry[f"{side}_accuracy"] for entry in per_seed]
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        accuracy[side] = {
            "mean": statistics.fmean(values),
            "stdev": stdev,
            "min": min(values),
            "max": max(values),
        }
    return {"per_seed": per_seed, **kdcore_over_torchdistill(), "final_accuracy": accuracy}


def print_summary(summary: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for column in ("seed", "kdcore steps/s", "torchdistill steps/s", "kdcore / td", "kdcore acc", "td acc"):
        table.add_column(column, justify="right")
    for e in summary["per_seed"]:
        table.add_row(
            str(e["seed"]),
            f"{e['kdcore_steps_per_s']:.1f}",
            f"{e['torchdistill_steps_per_s']:.1f}",
            f"{e['ratio']:.3f}",
            f"{e['kdcore_accuracy']:.4f}",
            f"{e['torchdistill_accuracy']:.4f}",
        )
    Console().print(table)
    print_speed_ratios("kdcore / torchdistill", summary)
    for side, a in summary["final_accuracy"].items():
        print(
            f"{side} final accuracy over {len(summary['per_seed'])} seeds: mean {a['mean']:.4f}, "
            f"stdev {a['stdev']:.4f} (min {a['min']:.4f}, max {a['max']:.4f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="student seeds 0..N-1")
    parser.add_argument("--rounds", type=int, default=2, help="counted runs of each side per seed")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs per run")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: the task's")
    parser.add_argument("--teacher", default="cnn_large", help="classify architecture of the teacher")
    parser.add_argument("--student", default="cnn_small", help="classify architecture of the student")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/torchdistill_compare.json")
    args = parser.parse_args()
    set_threads(args.threads)
    if get_distillation_box is None:
        sys.exit("torchdistill is not installed; install the bench extra: pip install -e '.[bench]'")

    difference = loss_difference()
    print(f"KD loss check, torchdistill against kdcore: max |difference| {difference:.2e} (loss and grad)")
    if not difference <= TOLERANCE:
        sys.exit(f"the KD losses differ by {difference:.2e} > {TOLERANCE:g}: the recipes are not the same")

    clock = StageClock()
    registry = timing_registry(clock)
    task = registry.get_task("classify", "digits")
    sets = [
        f"student.arch='{args.student}'",
        f"teacher.arch='{args.teacher}'",
        f"student.epochs={args.epochs}",
        f"data.batch_size={BATCH_SIZE}",
        f"distill.temperature={TEMPERATURE}",
        f"distill.alpha={ALPHA}",
        "distill.baseline=false",
        "train.amp=false",
    ]
    if args.teacher_epochs is not None:
        sets.append(f"teacher.epochs={args.teacher_epochs}")
    common = {"plugin": "classify", "task": "digits", "device": args.device}
    common["with_plugins"] = ["kd_bench_timing"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bench-torchdistill-") as tmp:
        work = Path(tmp)
        common["out_dir"] = str(work)
        teacher_run = resolve(task.defaults, sets=[*sets, "student.epochs=1"], overrides=common)
        first = fit(teacher_run, registry, console=Console(file=io.StringIO()))
        teacher_path = str(first.run_dir / "checkpoints" / "teacher_best.pt")

        def run(side: str, seed: int, label: str) -> dict[str, float]:
            overrides = {**common, "seed": seed, "teacher": {"checkpoint": teacher_path}}
            config = resolve(task.defaults, sets=sets, overrides=overrides)
            if side == "kdcore":
                steps = args.epochs * math.ceil(len(task.build_data(config).train) / BATCH_SIZE)
                return kdcore_run(registry, config, clock, steps)
            out = work / label
            out.mkdir()
            return torchdistill_run(task, config, teacher_path, out)

        for side in SIDES:  # warm-up, not counted
            run(side, 0, f"warmup-{side}")
        rows: list[dict[str, Any]] = []
        for index in range(args.seeds * args.rounds):
            seed, round_ = divmod(index, args.rounds)
            for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                row = run(side, seed, f"{side}-{seed}-{round_}")
                rows.append({"side": side, "seed": seed, "round": round_, **row})

    summary = summarise(rows, args.seeds)
    device = str(select_device(args.device))
    title = f"Vanilla KD, {args.student} from {args.teacher}, {args.epochs} epochs, on {device}"
    print_summary(summary, title)
    report = {
        "benchmark": "torchdistill_compare",
        **environment(),
        "device": device,
        "torchdistill": version("torchdistill"),
        "sets": sets,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "loss_check_max_abs_diff": difference,
        "runs": rows,
        **summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
