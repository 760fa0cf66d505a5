"""Engine overhead: the same KD student trained by ``kd`` and by a minimal hand-written PyTorch loop.

Both sides train the same student (``classify``'s ``cnn_small`` by default) from the same trained teacher
(``cnn_large``, trained once by ``kd`` first), on the same digits, in the same batches, from the same
initial weights, with the same optimiser (Adam, the task's learning rate) and the same loss,
``(1 - alpha) CE + alpha KL(softmax(t/T) || softmax(s/T)) T^2`` with T = 4 and alpha = 0.5. Both
validate on the held-out digits every ``--eval-every`` epochs (default 1) and after the last, and the
plain loop keeps the best weights in a checkpoint as a user's would. ``kd`` runs with its defaults: a
metrics line every 10 steps, the rich progress bar (drawn into a buffer), each epoch's resume state and
last/best checkpoints copied at the epoch's end and written at most every 10 s and at the end of the stage
(``train.checkpoint_every_s``).

Rounds alternate the order (plain then kd, kd then plain, ...) after one warm-up round of each that is not
counted. The figure is steps per second over the whole student stage (training and validation), the
kd side timed from ``kd_fit_start`` to ``kd_fit_end``; the ratio is the median over rounds of kd's
steps per second over the plain loop's, from the same round. The same ratio is also given per CPU
second of the process (``time.process_time``), which other processes on a shared machine do not
lengthen; ``--threads 1`` makes it the steadiest figure. The final accuracies of both are printed:
with the same seed they train the same student.

    .venv/bin/python benchmarks/engine_overhead.py [--rounds 5] [--epochs 10] [--student cnn_small]
        [--teacher cnn_large] [--batch-size 64] [--eval-every 1] [--device auto] [--threads N]
        [--compile] [--plain-batches items|gathered] [--profile DIR]

Prints a table and writes benchmarks/results/engine_overhead.json.

kd fetches the digits a whole batch at a time (one indexing per tensor: :mod:`kdcore.tensor_batches`); the
plain loop, as a user writes it, lets the DataLoader fetch them item by item and stack them.
``--plain-batches gathered`` gives the plain loop kd's batches, so that the ratio is the engine's own
overhead alone.

``--threads 1 --teacher mlp --student mlp`` is a CPU stand-in for a GPU loop with small models: its
steps are about 1 ms of operator dispatch, so host work outside the step (hooks, checkpoint writes,
printing) shows in the ratio as it does on a GPU, and its rounds agree within a few points (BENCHMARKS.md,
engine overhead, session 18). ``--profile DIR`` adds operator and function tables of each side.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import (
    StageClock,
    add_keep_runs,
    environment,
    load_teacher,
    print_speed_ratios,
    profiled,
    python_profiled,
    set_threads,
    speed_ratios,
    timing_registry,
    training_row,
    work_dir,
    write_result,
)
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader

from kdcore.config import resolve
from kdcore.engine import fit, select_device
from kdcore.tasks import Task
from kdcore.tensor_batches import TensorBatches, collate

TEMPERATURE, ALPHA = 4.0, 0.5


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hinton's loss, written out as a user of a plain loop would."""
    soft = F.kl_div(
        F.log_softmax(student / TEMPERATURE, dim=1),
        F.log_softmax(teacher / TEMPERATURE, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - ALPHA) * F.cross_entropy(student, targets) + ALPHA * soft * TEMPERATURE**2


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        correct += int((model(inputs).argmax(dim=1) == targets).sum())
        total += len(targets)
    return correct / total


def recipe_sets(
    teacher: str, student: str, epochs: int, batch_size: int, eval_every: int = 1, compile: bool = False
) -> list[str]:
    """The ``--set`` values of the recipe both sides train: the models, epochs, batches, validation, and
    Hinton's loss at T = 4 and alpha 0.5, without the no-KD baseline stage."""
    return [
        f"teacher.arch='{teacher}'",
        f"student.arch='{student}'",
        f"student.epochs={epochs}",
        f"data.batch_size={batch_size}",
        f"distill.temperature={TEMPERATURE}",
        f"distill.alpha={ALPHA}",
        "distill.baseline=false",
        f"train.eval_every={eval_every}",
        f"train.compile={str(compile).lower()}",
    ]


def plain_loop(
    task: Task,
    config: Mapping[str, Any],
    teacher_path: str,
    out: Path,
    gathered: bool = False,
    mark: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Train the KD student with a hand-written loop; return its steps per second and final accuracy.
    With ``train.compile`` the training forward passes of both models go through ``torch.compile``, as
    in kd (validation uses the plain student). ``gathered``: its loaders fetch each batch in one indexing
    per tensor, as kd's do (:mod:`kdcore.tensor_batches`), instead of the DataLoader's item by item.
    ``mark`` is called where the timed part starts and where it ends."""
    device = select_device(config["device"])
    data = task.build_data(config)
    train_set, val_set, collate_fn = data.train, data.val, None
    if gathered:
        train_set, val_set, collate_fn = TensorBatches.of(data.train), TensorBatches.of(data.val), collate
    teacher = load_teacher(task, config, teacher_path, device)
    torch.manual_seed(config["seed"])
    student = task.build_model(config["student"]["arch"], data.info, config).to(device)
    forward = torch.compile(student) if config["train"]["compile"] else student
    if config["train"]["compile"]:
        teacher = torch.compile(teacher)
    generator = torch.Generator().manual_seed(config["seed"])
    batch_size = config["data"]["batch_size"]
    train = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn
    )
    val = DataLoader(val_set, batch_size=config["data"]["eval_batch_size"], collate_fn=collate_fn)
    optimizer = torch.optim.Adam(student.parameters(), lr=config["student"]["lr"])
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    best, steps, value = -1.0, 0, 0.0
    epochs, every = config["student"]["epochs"], config["train"]["eval_every"]
    if mark is not None:
        mark()
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        student.train()
        for inputs, targets in train:
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss = kd_loss(forward(inputs), teacher_logits, targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        if (epoch + 1) % every and epoch != epochs - 1:
            continue
        value = accuracy(student, val, device)
        if value > best:
            best = value
            torch.save(student.state_dict(), out / "best.pt")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if mark is not None:
        mark()
    return training_row(steps, seconds, cpu_seconds, value)


def kd_run(registry, config: Mapping[str, Any], clock: StageClock, steps: int) -> dict[str, float]:
    """Train the same student with ``kd`` (``steps`` in all); steps per second over its student stage."""
    clock.clear()
    console = Console(file=io.StringIO(), force_terminal=True, width=120)  # the bar is drawn
    started = time.perf_counter()
    result = fit(dict(config), registry, console=console)
    wall = time.perf_counter() - started
    stage = result.summary["stages"]["student"]
    row = training_row(steps, clock.stages["student"], clock.cpu["student"], stage["final_metric"])
    return {**row, "fit_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds of each side")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs per run")
    parser.add_argument("--teacher", default="cnn_large")
    parser.add_argument("--student", default="cnn_small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and the last)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--compile", action="store_true", help="both sides through torch.compile (kd: train.compile = true)"
    )
    parser.add_argument(
        "--plain-batches",
        choices=("items", "gathered"),
        default="items",
        help="the plain loop's loaders: the DataLoader's own item-by-item fetch and stack (default, as a "
        "user writes it) or whole batches gathered as kd gathers them (the engine's overhead alone)",
    )
    parser.add_argument("--out", default="benchmarks/results/engine_overhead.json")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="after the timed rounds, one more run of each side under torch.profiler and one under cProfile: "
        "operator and function tables in DIR, operator calls, kernel launches and host syncs per step in "
        "the result",
    )
    add_keep_runs(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    clock = StageClock()
    registry = timing_registry(clock)
    task = registry.get_task("classify", "digits")
    work = work_dir(args, "overhead")
    sets = recipe_sets(
        args.teacher, args.student, args.epochs, args.batch_size, args.eval_every, args.compile
    )
    common = {"plugin": "classify", "task": "digits", "out_dir": str(work), "device": args.device}
    common["with_plugins"] = ["kd_bench_timing"]
    started = time.perf_counter()
    quiet = Console(file=io.StringIO())
    first = fit(resolve(task.defaults, sets=sets, overrides=common), registry, console=quiet)
    teacher_path = str(first.run_dir / "checkpoints" / "teacher_best.pt")
    config = resolve(task.defaults, sets=sets, overrides={**common, "teacher": {"checkpoint": teacher_path}})
    steps = args.epochs * math.ceil(len(task.build_data(config).train) / args.batch_size)
    rows: dict[str, list[dict[str, float]]] = {"plain": [], "kd": []}

    def run_side(side: str, name: str) -> dict[str, float]:
        if side == "kd":
            return kd_run(registry, config, clock, steps)
        plain_out = work / f"plain-{name}"
        plain_out.mkdir()
        return plain_loop(task, config, teacher_path, plain_out, args.plain_batches == "gathered")

    for round_ in range(args.rounds + 1):
        order = ("plain", "kd") if round_ % 2 == 0 else ("kd", "plain")
        for side in order:
            row = run_side(side, str(round_))
            if round_ > 0:  # round 0 warms up both sides
                rows[side].append(row)
    ratios = speed_ratios(rows["kd"], rows["plain"])
    profiles = {}
    if args.profile:
        for side in ("plain", "kd"):
            table = Path(args.profile) / f"engine_overhead_{side}.txt"
            with profiled(table.parent, table.stem, steps) as profiles[side]:
                run_side(side, "profiled")
            with python_profiled(table):
                run_side(side, "python-profiled")
    report = {
        "benchmark": "engine_overhead",
        **environment(),
        "device": str(select_device(args.device)),
        "sets": sets,
        "plain_batches": args.plain_batches,
        "rounds": args.rounds,
        "plain": rows["plain"],
        "kd": rows["kd"],
        **ratios,
        **({"profile": profiles} if profiles else {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    per_epoch = steps // args.epochs
    title = (
        f"KD student stage, {args.student} from {args.teacher}, {args.epochs} epochs of {per_epoch} steps, "
        f"validation every {args.eval_every}{', compiled' if args.compile else ''} (median)"
    )
    table = Table(title=title)
    for column in ("loop", "steps/s", "stage s", "stage CPU s", "final accuracy"):
        table.add_column(column, justify="right")
    for side, label in (("plain", "plain PyTorch"), ("kd", "kd (defaults)")):
        table.add_row(
            label,
            f"{statistics.median(r['steps_per_s'] for r in rows[side]):.1f}",
            f"{statistics.median(r['seconds'] for r in rows[side]):.3f}",
            f"{statistics.median(r['cpu_seconds'] for r in rows[side]):.3f}",
            ", ".join(f"{r['final_accuracy']:.4f}" for r in rows[side]),
        )
    Console().print(table)
    print_speed_ratios("kd / plain", ratios)
    for side, profile in profiles.items():
        print(f"{side} under the profiler: {profile}")
    write_result(args.out, report)


if __name__ == "__main__":
    main()
