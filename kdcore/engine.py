"""The training loop: runs the stages a strategy plans and calls the distillation hooks.

``fit(config)`` trains every stage of a run (teachers, assistants, the student and the no-KD baseline),
writes ``config.toml``, ``metrics.jsonl``, checkpoints and the report into one run directory, and returns
the run directory with its summary.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pluggy
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdcore import distributed
from kdcore.checkpoint import (
    BackgroundWriter,
    EpochCheckpoints,
    atomic_write_text,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
    snapshot,
)
from kdcore.config import write_config
from kdcore.hints import HintTerms, parse_hints
from kdcore.plugins import Registry, direct_caller, get_registry
from kdcore.report import read_metrics, write_report
from kdcore.resume import (
    capture_rng,
    check_resumable,
    finished_stages,
    load_resume_state,
    load_stage_weights,
    restore_rng,
    resume_path,
    save_resume_state,
    truncate_metrics,
)
from kdcore.schedules import Constant, Schedule, build_schedule
from kdcore.strategies import EnsembleTeacher, Stage, plan_run
from kdcore.tasks import Task, TaskData
from kdcore.teacher_cache import IndexedDataset, TeacherCache, indexed_collate, refusal
from kdcore.tensor_batches import TensorBatches
from kdcore.tensor_batches import collate as collate_batch

#: Seconds between two redraws of the progress bar. rich's own refresh thread (10 a second) competes
#: with the training loop for the CPU and the GIL; the loop redraws it itself, at most this often.
BAR_REDRAW_S = 0.5

#: Keys of a training record that kdcore writes itself; loss terms may not reuse them.
RESERVED_LOG_KEYS = frozenset({"total", "supervised", "temperature", "alpha", "signals", "lr"})

#: Where :meth:`DistillRun.publish_info` keeps what stages published, in the run directory.
INFO_FILE = "info.json"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was asked for but CUDA is not available; use --device cpu or auto"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(
            f"device {name!r} was asked for but MPS is not available; use --device cpu or auto"
        )
    return device


AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast_dtype(train: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` / ``train.amp_dtype`` on ``device``; None: full precision.

    ``auto`` is float16 (with a gradient scaler) on CUDA and full precision elsewhere; ``bfloat16`` runs
    on CUDA and CPUs (no scaler needed); ``float16`` needs CUDA.
    """
    name = train["amp_dtype"]
    if name not in ("auto", *AMP_DTYPES):
        raise ValueError(f"train.amp_dtype must be auto, float16 or bfloat16, got {name!r}")
    if not train["amp"]:
        return None
    if name == "auto":
        return torch.float16 if device.type == "cuda" else None
    if name == "float16" and device.type != "cuda":
        raise ValueError(f"train.amp_dtype float16 needs CUDA, the device is {device}; use bfloat16 or auto")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"train.amp_dtype {name} is not supported on {device}; use auto")
    return AMP_DTYPES[name]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a repeatable run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``: in tuples (named ones too), lists and dicts.
    A tensor already there is returned as it is, without a call to ``Tensor.to``."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        if all(type(v) is torch.Tensor and v.device == device for v in batch):  # the usual batch
            return batch
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes it, so a crash loses nothing.

    With ``enabled=False`` (the other processes of a distributed run) it writes nothing.
    """

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self._fh = path.open("a", encoding="utf-8") if enabled else None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record, default=float) + "\n")
            self._fh.flush()

    def size(self) -> int:
        """Bytes written so far: the length a resumed run cuts the file back to."""
        return self._fh.tell() if self._fh is not None else 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


@dataclass
class DistillRun:
    """The state of a run that every distillation hook receives.

    Attributes:
        config: the resolved configuration (nested dict).
        task: the selected :class:`kdcore.tasks.Task`.
        data: the task's :class:`kdcore.tasks.TaskData`.
        run_dir: the run directory.
        device: the torch device.
        pm: the run-scoped plugin manager (call ``run.pm.hook.<name>(...)`` to dispatch).
        kd_loss: the logit loss named by ``distill.loss``: ``kd_loss(student, teacher, temperature)``.
        stage: the role of the stage being trained: "teacher", "assistant1", "student", "baseline", ...
        variant: the ``variants`` entry being trained ("" outside variants); ``config`` is then that
            variant's configuration (the run's with the variant merged in).
        student: the model being trained in this stage.
        teacher: the model teaching it (None in supervised stages).
        step, total_steps, epoch: position in the stage; ``progress`` is ``step / total_steps``.
        temperature, alpha: the values used at the current step.
        signals: named values schedules may read ("agreement", "val_metric", "loss_ratio", plugins' own):
            floats, or 0-dim tensors that stay on the device until read (the engine's "agreement" and
            "loss_ratio", updated at log points and on every step when a schedule reads signals:
            ``float()`` one to read it, which waits for the device); logged as floats with every
            training record and drawn in ``report/signals.png``.
        amp_dtype: the autocast dtype of forward passes (``train.amp`` and ``train.amp_dtype``), or None
            for full precision; ``amp`` says whether there is one, ``grad_scaling`` whether float16 needs
            a gradient scaler (a plugin training its own model in the step uses the same).
        plugin_state: a scratch dict that lives for the whole run, for plugins' own objects (an online
            assistant, a cache); key it by plugin name. To survive ``kd train --resume``, implement
            ``kd_state_dict`` / ``kd_load_state_dict`` for what is in it.
        teacher_label: the stage label of the model teaching this stage ("teacher", or an assistant's).
        teacher_caches: the teacher-output caches of the run, by teacher label (``train.teacher_cache``).
        dist: this process's place in a ``torchrun`` launch (rank, world size); rank 0 writes the run
            directory (:mod:`kdcore.distributed`).
        info: the task data's ``info`` (:class:`kdcore.tasks.TaskData`) plus what stages published with
            :meth:`publish_info`; model builders receive it and every checkpoint stores it.
        started_at: ``time.perf_counter()`` when the run started (earlier, for a resumed run, by the time
            it had already run).
        stop_requested: set to True from a hook to end the stage after the current epoch (after the next
            one when set in ``kd_epoch_end`` of an epoch without validation: a stage ends validated).
    """

    config: dict[str, Any]
    task: Task
    data: TaskData
    run_dir: Path
    device: torch.device
    pm: pluggy.PluginManager
    log: MetricsLog
    kd_loss: Callable[[Any, Any, Any], torch.Tensor]
    stage: str = ""
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    hints: HintTerms | None = None
    step: int = 0
    total_steps: int = 1
    epoch: int = 0
    temperature: float | torch.Tensor = 1.0
    alpha: float = 0.0
    signals: dict[str, float | torch.Tensor] = field(default_factory=dict)
    stop_requested: bool = False
    variant: str = ""
    amp_dtype: torch.dtype | None = None
    plugin_state: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    teacher_label: str = ""
    teacher_caches: dict[str, TeacherCache] = field(default_factory=dict)
    dist: distributed.Distributed = field(default_factory=distributed.Distributed)

    def publish_info(self, key: str, value: Any) -> None:
        """Hand a fact to the model builders of the stages after this one (a searched architecture, a
        pruned channel plan): ``build_model(arch, info, config)`` receives it in ``info``, every later
        checkpoint stores it (so ``kd eval`` rebuilds the model from the checkpoint alone), and
        ``info.json`` in the run directory keeps it for ``kd train --resume``. Call it from
        ``kd_fit_end``; ``value`` must be JSON-serialisable (numbers, strings, lists, dicts).
        """
        try:
            text = json.dumps({**self.info, key: value}, indent=2, sort_keys=True)
        except TypeError as err:
            raise TypeError(f"publish_info({key!r}): the value must be JSON-serialisable: {err}") from None
        self.info[key] = value
        if self.dist.is_main:
            atomic_write_text(self.run_dir / INFO_FILE, text + "\n")

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def distilling(self) -> bool:
        return self.teacher is not None

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    @property
    def grad_scaling(self) -> bool:
        return self.amp_dtype == torch.float16


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``kd train --resume run_dir`` continues it from the last finished epoch."""

    def __init__(self, run_dir: Path, stage: str, epoch: int) -> None:
        super().__init__(
            f"interrupted in stage {stage!r} during epoch {epoch + 1}; its weights at that moment are in "
            f"checkpoints/, and `kd train --resume {run_dir}` continues from the last finished epoch"
        )
        self.run_dir, self.stage, self.epoch = run_dir, stage, epoch


@dataclass
class FitResult:
    """What :func:`fit` returns: the run directory and its summary (also in ``report/summary.json``)."""

    run_dir: Path
    summary: dict[str, Any]


def make_run_dir(config: Mapping[str, Any], task: Task) -> Path:
    name = config["run_name"] or datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    run_dir = Path(config["out_dir"]) / task.plugin / task.name / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run directory {run_dir} already exists and is not empty; choose another run_name"
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """``train.deterministic``: while a run trains, PyTorch picks deterministic kernels (cuDNN without
    autotuning, cuBLAS with a fixed workspace), so the same seed gives the same weights on a GPU too,
    and a resumed run the weights of an uninterrupted one. An op with no deterministic kernel warns
    (PyTorch names it) instead of stopping the run. Off, nothing is changed; the previous global
    settings come back when the run ends."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def fit(
    config: dict[str, Any],
    registry: Registry | None = None,
    console: Console | None = None,
    resume: str | Path | None = None,
) -> FitResult:
    """Run every stage of a distillation run described by a resolved ``config``.

    With ``resume`` (a run directory whose ``config.toml`` is ``config``), continue that run instead:
    finished stages are kept, the interrupted one continues after its last finished epoch
    (:mod:`kdcore.resume`). Ctrl-C raises :class:`RunInterrupted` after saving what it can.
    """
    with deterministic_kernels(bool(config["train"].get("deterministic", False))):  # older runs lack it
        return _fit(config, registry, console, resume)


def _fit(
    config: dict[str, Any],
    registry: Registry | None,
    console: Console | None,
    resume: str | Path | None,
) -> FitResult:
    registry = registry or get_registry()
    console = console or Console()
    task = registry.get_task(config["plugin"], config["task"])
    plan = plan_run(config)
    for stage, _ in plan:
        if stage.arch not in task.architectures:
            raise ValueError(
                f"{stage.section}.arch {stage.arch!r} (stage {stage.label!r}) is not an architecture of task "
                f"{task.plugin}/{task.name}; choose one of: {', '.join(task.architectures)}"
            )
    # Schedules and hints of every variant, checked before anything is trained.
    configs = {stage.variant: cfg for stage, cfg in plan}
    settings = {variant: _stage_settings(cfg, registry) for variant, cfg in configs.items()}
    requested = select_device(config["device"])
    where = distributed.init(requested)
    if where.active:
        _check_distributed(config, settings, resume)
        if not where.is_main:
            console = Console(file=io.StringIO())  # rank 0 speaks for the run
    device = distributed.device(requested, where)
    amp_dtype = autocast_dtype(config["train"], device)
    seed_everything(config["seed"])
    data = task.build_data(config)
    samplers = (data.train_batch_sampler, data.for_stage(is_teacher=True).train_batch_sampler)
    if where.active and any(sampler is not None for sampler in samplers):
        raise ValueError(
            f"task {task.plugin}/{task.name} draws its own training batches (TaskData.train_batch_sampler), "
            "which is not supported under torchrun yet; run it in one process"
        )
    pm = registry.run_plugin_manager(task, config["with_plugins"])
    if config["train"]["teacher_cache"]:
        trusted = task.plugin if data.soft_targets_per_item else ""
        for _, hint_specs in settings.values():
            reason = refusal(data.deterministic_train, hint_specs, pm, trusted)
            if reason:
                raise ValueError(f"train.teacher_cache cannot be used: {reason}; set it to false")
    resume_state, finished = None, set()
    if resume is None:
        run_dir = make_run_dir(config, task) if where.is_main else None
        run_dir = distributed.broadcast(run_dir, where)
        if where.is_main:
            write_config(run_dir / "config.toml", config)
    else:
        run_dir = Path(resume)
        resume_state, finished = _prepare_resume(run_dir, device)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=where.is_main)
    kd_loss = registry.losses[config["distill"]["loss"]]
    run = DistillRun(config, task, data, run_dir, device, pm, log, kd_loss, amp_dtype=amp_dtype, dist=where)
    run.info = {**data.info, **_published_info(run_dir)} if resume is not None else dict(data.info)
    verb = "resuming" if resume is not None else "→"
    console.print(f"[bold]kd[/] {escape(f'{task.plugin}/{task.name} on {device} {verb} {run_dir}')}")
    started = time.perf_counter() - (resume_state or {}).get("run_seconds", 0.0)
    run.started_at = started
    try:
        teachers: list[nn.Module] = []
        shared_teacher: nn.Module | None = None
        teacher: nn.Module | None = None
        variant = None
        for stage, stage_config in plan:
            run.config, run.variant = stage_config, stage.variant
            run.kd_loss = registry.losses[stage_config["distill"]["loss"]]
            schedules, hint_specs = settings[stage.variant]
            partial = resume_state if resume_state and resume_state["stage"] == stage.label else None
            done = stage.label in finished  # by the run this one resumes
            if stage.is_teacher:
                teacher_model = (
                    _finished_stage_model(run, stage)
                    if done
                    else _teacher_model(run, stage, schedules, console, partial)
                )
                teachers.append(teacher_model.eval())
                continue
            if shared_teacher is None:
                shared_teacher = teachers[0] if len(teachers) == 1 else _ensemble(teachers, config, device)
            if stage.variant != variant:  # each variant's chain starts from the shared teacher
                variant, teacher, run.teacher_label = stage.variant, shared_teacher, "teacher"
            if done:
                model = _finished_stage_model(run, stage)
            else:
                distilled_by = teacher if stage.distilled else None
                model = _train_stage(run, stage, distilled_by, schedules, hint_specs, console, partial)
            if stage.name.startswith("assistant"):
                teacher, run.teacher_label = model, stage.label
        run.config, run.variant = config, ""
        log.write({"split": "run", "seconds": round(time.perf_counter() - started, 2), "device": str(device)})
        (run_dir / "checkpoints" / "resume.pt").unlink(missing_ok=True)  # finished: nothing to resume
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, run.stage, run.epoch) from None
    finally:
        log.close()
    summary = distributed.broadcast(write_report(run_dir) if where.is_main else None, where)
    console.print(summary_table(summary))
    console.print(f"run directory: {run_dir}", markup=False, soft_wrap=True)
    return FitResult(run_dir=run_dir, summary=summary)


def summary_table(summary: Mapping[str, Any]) -> Table:
    """The stages of a run side by side: size, best and final main metric, gain over the baseline, time."""
    metric = summary["main_metric"]
    baseline = summary["stages"].get("baseline", {})
    rows = []
    for name, stage in summary["stages"].items():
        gain = ""  # only for distilled students: the baseline has their architecture, not an assistant's
        if (
            stage.get("distilled")
            and stage["arch"] == baseline.get("arch")
            and stage["best_metric"] is not None
        ):
            gain = f"{stage['best_metric'] - baseline['best_metric']:+.4f}"
        rows.append(
            (
                name,
                str(stage["arch"]),
                f"{stage['parameters']:,}",
                _number(stage["best_metric"]),
                _number(stage["final_metric"]),
                gain,
                f"{stage['seconds']:.0f}",
            )
        )
    table = Table(
        title=f"{metric}: best and final by stage, gain over the no-KD baseline "
        f"({summary['seconds']:.0f} s on {summary.get('device', '?')})",
        pad_edge=False,
    )
    for index, column in enumerate(("stage", "arch", "params", "best", "final", "gain", "s")):
        width = max([len(column), *(len(row[index]) for row in rows)])
        table.add_column(column, justify="left" if index < 2 else "right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _stage_settings(config: Mapping[str, Any], registry: Registry) -> tuple[dict[str, Schedule], list]:
    """The schedules and feature hints one configuration (the run's, or a variant's) trains with."""
    hint_specs = parse_hints(config["distill"]["hints"])
    if hint_specs and config["distill"]["strategy"] == "ensemble":
        raise ValueError("distill.hints need a single teacher; they cannot be used with strategy 'ensemble'")
    return _build_schedules(config, registry), hint_specs


def _build_schedules(config: Mapping[str, Any], registry: Registry) -> dict[str, Schedule]:
    distill = config["distill"]
    schedules = {
        "temperature": build_schedule(
            distill["temperature"], registry.schedules, where="distill.temperature"
        ),
        "alpha": build_schedule(distill["alpha"], registry.schedules, where="distill.alpha"),
    }
    for section in ("teacher", "student"):  # a factor on the section's lr over the stage's progress
        where = f"{section}.lr_schedule"
        schedules[f"lr:{section}"] = build_schedule(config[section]["lr_schedule"], registry.schedules, where)
        if schedules[f"lr:{section}"].parameters():
            raise ValueError(f"{where} cannot be a learnable schedule: nothing trains a learning rate")
    for term, spec in distill["weights"].items():
        schedules[f"weight:{term}"] = build_schedule(
            spec, registry.schedules, where=f"distill.weights.{term}"
        )
    if distill["loss"] not in registry.losses:
        raise ValueError(
            f"distill.loss {distill['loss']!r} is not one of {', '.join(sorted(registry.losses))}"
        )
    return schedules


def _ensemble(teachers: list[nn.Module], config: Mapping[str, Any], device: torch.device) -> nn.Module:
    return EnsembleTeacher(teachers, config["distill"]["teacher_weights"]).to(device).eval()


def _build_model(run: DistillRun, stage: Stage) -> nn.Module:
    # Every stage restarts Python's, NumPy's and torch's generators at the run seed: the student and the
    # no-KD baseline start from equal weights and draw the same augmentations from those generators. (A
    # plugin whose transforms keep their own generator, like MONAI's, restarts it in ``kd_fit_start``.)
    seed_everything(run.config["seed"])
    return run.task.build_model(stage.arch, _stage_info(run, stage), run.config).to(run.device)


def _stage_info(run: DistillRun, stage: Stage) -> dict[str, Any]:
    """What ``build_model`` receives and checkpoints store: the teacher's own data's ``info`` for a
    teacher stage with ``TaskData.teacher_data``, else the run's (with what stages published)."""
    if stage.is_teacher and run.data.teacher_data is not None:
        return dict(run.data.teacher_data.info)
    return dict(run.info)


def _published_info(run_dir: Path) -> dict[str, Any]:
    """What the stages of a run published with :meth:`DistillRun.publish_info` (for a resumed run)."""
    path = run_dir / INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it holds what the stages published") from None


def _check_distributed(config: Mapping[str, Any], settings: Mapping[str, Any], resume: Any) -> None:
    """What torchrun does not support yet, refused before anything runs."""
    if resume is not None:
        raise ValueError("kd train --resume is not supported under torchrun yet; resume in one process")
    if config["train"]["teacher_cache"]:
        raise ValueError("train.teacher_cache is not supported under torchrun yet; set it to false")
    for schedules, hint_specs in settings.values():
        if hint_specs:
            raise ValueError(
                "distill.hints are not supported under torchrun yet (their adapters are not synced)"
            )
        if any(schedule.parameters() for schedule in schedules.values()):
            raise ValueError("learnable schedules are not supported under torchrun yet (not synced)")


def _prepare_resume(run_dir: Path, device: torch.device) -> tuple[dict | None, set[str]]:
    """Cut the metrics back to the last saved epoch; return the interrupted stage's saved state (None when
    no stage was part-way) and the labels of the finished stages."""
    check_resumable(run_dir, read_metrics(run_dir))
    remove_partial_writes(run_dir / "checkpoints")  # a killed run's write in flight
    state = load_resume_state(run_dir, device)
    if state is not None:
        truncate_metrics(run_dir / "metrics.jsonl", int(state["metrics_bytes"]))
    finished = finished_stages(read_metrics(run_dir))
    return (None if state is None or state.get("finished") else state), finished


def _finished_stage_model(run: DistillRun, stage: Stage) -> nn.Module:
    """A stage a resumed run already finished: its best weights, without training."""
    model = _build_model(run, stage)
    path = run.run_dir / "checkpoints" / f"{stage.checkpoint_prefix}best.pt"
    model.load_state_dict(load_stage_weights(path, run.device))
    return model


def _teacher_model(
    run: DistillRun, stage: Stage, schedules: dict, console: Console, resume: dict | None = None
) -> nn.Module:
    path = run.config["teacher"]["checkpoint"] if stage.name == "teacher" else ""
    if not path:
        return _train_stage(run, stage, None, schedules, [], console, resume)
    state = load_checkpoint(path, map_location=run.device)
    if state.get("arch", stage.arch) != stage.arch:
        raise ValueError(
            f"teacher.checkpoint {path} holds architecture {state['arch']!r}, "
            f"but teacher.arch is {stage.arch!r}"
        )
    model = _build_model(run, stage)
    model.load_state_dict(state["model"])
    console.print(f"\\[teacher] loaded {path}")
    return model.eval()


def _teacher_cache(run: DistillRun) -> TeacherCache:
    """The cache of the current teacher's outputs, shared by every stage it teaches."""
    label = run.teacher_label
    if label not in run.teacher_caches:
        path = run.run_dir / "cache" / f"teacher_{label.replace('/', '.')}.pt"
        run.teacher_caches[label] = TeacherCache(len(run.data.train), path)
    return run.teacher_caches[label]


def _compiled(
    trained: nn.Module, teacher: nn.Module | None, hint_specs: list
) -> tuple[nn.Module, nn.Module | None]:
    """``train.compile``: the training forward of the student, and the teacher's, through ``torch.compile``.

    The stage keeps the plain student for validation and checkpoints (their keys do not change). The
    first steps pay the compilation (tens of seconds on a CPU); it pays on a GPU with a model big enough
    to be bound by kernel launches, rarely on a CPU (BENCHMARKS.md).
    """
    if hint_specs and teacher is not None:
        raise ValueError(
            "train.compile cannot be used with distill.hints: feature hints capture activations with "
            "forward hooks inside the compiled graphs; set train.compile = false or remove the hints"
        )
    return torch.compile(trained), None if teacher is None else torch.compile(teacher)


def pin_memory(device: torch.device, num_workers: int) -> bool:
    """Whether a stage's loaders pin their batches: on CUDA with worker processes, whose pinning runs on
    the loader's own thread. Without workers it would run on the training thread, before a copy that
    pageable memory makes about as fast (PyTorch's guide to ``pin_memory()`` and ``non_blocking``:
    pinning and then copying can take twice as long as copying); the H200 profile of BENCHMARKS.md
    (engine overhead, session 18) counted 500 pins on the training thread in a stage of 230 steps."""
    return device.type == "cuda" and num_workers > 0


def _loaders(run: DistillRun, stage: Stage, indexed: bool = False) -> tuple[DataLoader, DataLoader]:
    """The stage's training loader (shuffled by the run seed; ``(indices, batch)`` when ``indexed``) and
    validation loader, over the teacher's own data for a teacher stage that has it."""
    data_cfg = run.config["data"]
    data = run.data.for_stage(stage.is_teacher)
    generator = torch.Generator().manual_seed(run.config["seed"])
    common = {
        "num_workers": data_cfg["num_workers"],
        "pin_memory": pin_memory(run.device, data_cfg["num_workers"]),
    }
    train_set, train_collate = _batched(data.train, data.collate_fn, indexed)
    val_set, val_collate = _batched(data.val, data.collate_fn)
    train_common = {**common, "collate_fn": train_collate}
    # Under torchrun each process takes its shard of the epoch, reshuffled by the loop's set_epoch.
    batch_sampler = data.train_batch_sampler
    if run.dist.active:
        order = {"sampler": distributed.sampler(train_set, run.dist, run.config["seed"])}
        order["batch_size"] = data_cfg["batch_size"]
    elif batch_sampler is not None:
        batches = batch_sampler(generator, run.config, stage.distilled)
        order = {"batch_sampler": batches, "generator": generator}
    else:
        order = {"shuffle": True, "generator": generator, "batch_size": data_cfg["batch_size"]}
    train = DataLoader(train_set, **order, **train_common)
    val = DataLoader(
        val_set, batch_size=data_cfg["eval_batch_size"], shuffle=False, collate_fn=val_collate, **common
    )
    if len(train) == 0:
        raise ValueError("the training set is empty: check data.path")
    return train, val


def _batched(
    dataset: Dataset, collate_fn: Callable | None, indexed: bool = False
) -> tuple[Dataset, Callable | None]:
    """A loader's data set and collate function: a tensor data set gathered a batch at a time
    (:mod:`kdcore.tensor_batches`) unless the task collates itself; ``indexed`` items come with their
    index, for the teacher-output cache."""
    gathered = TensorBatches.of(dataset, indexed) if collate_fn is None else None
    if gathered is not None:
        return gathered, collate_batch
    if indexed:
        return IndexedDataset(dataset), indexed_collate(collate_fn)
    return dataset, collate_fn


def _optimizer(
    model: nn.Module, extra: list[nn.Parameter], section: Mapping[str, Any]
) -> torch.optim.Optimizer:
    name = section["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad] + extra
    kwargs: dict[str, Any] = {"lr": section["lr"], "weight_decay": section["weight_decay"]}
    if name == "sgd":
        kwargs["momentum"] = 0.9
    return OPTIMIZERS[name](params, **kwargs)


def _set_lr(
    optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: Schedule, run: DistillRun, stage: Stage
) -> float:
    """Scale every parameter group's initial lr by ``factor`` at this step; return the first group's lr."""
    scale = float(factor(run.progress, run.signals))
    if not scale >= 0.0:
        raise ValueError(
            f"{stage.section}.lr_schedule gave {scale} at progress {run.progress:.3f}; "
            "a learning-rate factor must be a number >= 0"
        )
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * scale
    return base_lrs[0] * scale


def _better(task: Task, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new > old if task.higher_is_better else new < old


def _validates(epoch: int, epochs: int, every: int, stop_requested: bool) -> bool:
    """Whether epoch ``epoch`` (0-based) ends with validation: every ``every`` epochs, the last, a stop."""
    return (epoch + 1) % every == 0 or epoch == epochs - 1 or stop_requested


def _agreement(student_out: Any, teacher_out: Any) -> torch.Tensor | None:
    if not (isinstance(student_out, torch.Tensor) and isinstance(teacher_out, torch.Tensor)):
        return None
    if student_out.shape != teacher_out.shape or student_out.ndim < 2:
        return None
    # max(dim).indices, not argmax(dim): the same first-maximum index, but argmax over a strided class
    # dimension of dense (N, C, *spatial) logits is an order of magnitude slower on CPU.
    return (student_out.max(dim=1).indices == teacher_out.max(dim=1).indices).float().mean()


def _train_stage(
    run: DistillRun,
    stage: Stage,
    teacher: nn.Module | None,
    schedules: dict[str, Schedule],
    hint_specs: list,
    console: Console,
    resume: dict | None = None,
) -> nn.Module:
    cfg, task, device = run.config, run.task, run.device
    section = cfg[stage.section]
    cache = _teacher_cache(run) if teacher is not None and cfg["train"]["teacher_cache"] else None
    train_loader, val_loader = _loaders(run, stage, indexed=cache is not None)
    model = _build_model(run, stage)
    trained = distributed.wrap(model, run.dist)  # DistributedDataParallel under torchrun; the model else
    if cfg["train"]["compile"]:
        trained, teacher = _compiled(trained, teacher, hint_specs)
    run.stage, run.student, run.teacher, run.hints = stage.name, model, teacher, None
    run.step, run.epoch, run.stop_requested = 0, 0, False
    run.signals.clear()
    epochs = section["epochs"]
    run.total_steps = max(1, epochs * len(train_loader))
    extra_params: list[nn.Parameter] = []
    if teacher is not None:
        teacher.eval()
        for schedule in schedules.values():
            schedule.to(device)
            extra_params += schedule.parameters()
        if hint_specs:
            probe = task.split_batch(to_device(next(iter(train_loader)), device))[0]
            run.hints = HintTerms.build(hint_specs, model, teacher, probe)
            extra_params += list(run.hints.parameters())
    optimizer = _optimizer(model, extra_params, section)
    lr_factor = schedules[f"lr:{stage.section}"]
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda", enabled=run.grad_scaling)
    ckpt_dir = run.run_dir / "checkpoints"
    prefix = stage.checkpoint_prefix
    best_path, last_path = ckpt_dir / f"{prefix}best.pt", ckpt_dir / f"{prefix}last.pt"
    best: float | None = None
    best_epoch = -1
    value = float("nan")
    started = time.perf_counter()
    run.pm.hook.kd_fit_start(run=run)
    plan = StepPlan.of(run, schedules)
    if plan.fixed is not None and run.distilling:
        run.temperature, run.alpha = plan.fixed
    first_epoch = 0
    parts = StageParts(model, optimizer, scaler, schedules, train_loader.generator)
    if resume is not None:
        best, best_epoch, value, seconds = _restore_stage(run, resume, parts)
        first_epoch = epochs if resume["ended"] else run.epoch + 1
        started -= seconds

    writer = BackgroundWriter()
    resumable = not run.dist.active  # no resume under torchrun yet: only the checkpoints
    files = EpochCheckpoints(
        writer,
        resume_path(run.run_dir) if resumable else None,
        last_path,
        best_path,
        cfg["train"]["checkpoint_every_s"],
    )

    def save_epoch(ended: bool, metrics: Mapping[str, Any] | None = None, improved: bool = False) -> None:
        """The epoch's resume state, a checkpoint that ``kd eval`` also reads, for ``files``: after a
        validation (``metrics``) it is also ``last.pt`` and, when the metric ``improved``, ``best.pt``.
        The state is copied now and written on ``writer``'s thread, at most every
        ``train.checkpoint_every_s`` and at the end of the stage."""
        if not run.dist.is_main or (not resumable and metrics is None):
            return
        if resumable:
            state = {"best": best, "best_epoch": best_epoch, "value": value, "ended": ended}
            state["seconds"] = time.perf_counter() - started
            payload = snapshot(_stage_state(run, stage, state, parts, metrics or {}))
        else:
            payload = snapshot(_checkpoint_payload(run, stage, model, optimizer, metrics))
        files.add(payload, validated=metrics is not None, improved=improved, ended=ended)

    progress = Progress(
        TextColumn(f"[bold]{escape(stage.label)}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (cfg["train"]["progress"] and console.is_terminal),
        transient=True,
        auto_refresh=False,  # drawn from the loop at most every BAR_REDRAW_S: no drawing thread
    )
    # The bar appears BAR_REDRAW_S into the stage (a shorter stage shows its epoch lines only, as tqdm's
    # `delay` does; starting, drawing and removing a bar costs rich about 4 ms), then is redrawn at most
    # that often, with the step count and the last logged loss. Epoch lines wait for the next draw:
    # printing above a live bar redraws the bar (about 1 ms, 1 % of a 0.1 s GPU epoch), so the lines of
    # short epochs are printed together, in order; the last ones after the bar is gone, which costs less.
    bar = progress.add_task(stage.label, total=run.total_steps, completed=run.step, status="")
    next_draw = time.perf_counter() + BAR_REDRAW_S
    lines: list[str] = []
    status = ""
    drawn = contextlib.ExitStack()  # the bar, once shown, then the lines printed after it
    shown = False

    def print_lines() -> None:
        if lines:
            console.print("\n".join(lines), markup=False, highlight=False)
            lines.clear()

    def draw() -> None:
        nonlocal next_draw, shown
        if time.perf_counter() < next_draw:
            return
        progress.update(bar, completed=run.step, status=status)
        if not shown:
            drawn.enter_context(progress)  # draws it (unless disabled)
        if lines:
            print_lines()  # above the bar, which is redrawn
        elif shown:
            progress.refresh()
        shown, next_draw = True, time.perf_counter() + BAR_REDRAW_S

    try:
        with drawn:
            drawn.callback(print_lines)  # after the bar is gone; also after an error or Ctrl-C
            log_every, accumulate = cfg["train"]["log_every"], cfg["train"]["accumulate"]
            lr = _set_lr(optimizer, base_lrs, lr_factor, run, stage)
            lr_varies = not isinstance(lr_factor, Constant)  # else set once, here
            watch = LossWatch(log_every)
            # agreement and loss_ratio: every step for a schedule that reads signals, else at log points
            signals_every_step = any(getattr(s, "reads_signals", True) for s in schedules.values())
            for epoch in range(first_epoch, epochs):
                run.epoch = epoch
                if hasattr(train_loader.sampler, "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                run.pm.hook.kd_epoch_start(run=run, epoch=epoch)
                model.train()
                batches = len(train_loader)
                for index, batch in enumerate(train_loader):
                    if lr_varies:
                        lr = _set_lr(optimizer, base_lrs, lr_factor, run, stage)
                    window = _window(index, batches, accumulate)
                    cached = None
                    if cache is not None:
                        items, batch = batch
                        cached = (cache, items)
                    batch = to_device(batch, device)
                    logs = run.step % log_every == 0
                    signals = signals_every_step or logs
                    losses = _train_step(
                        run, plan, trained, optimizer, scaler, schedules, batch, *window, cached, signals
                    )
                    watch.update(losses["total"], run.step)
                    if logs:  # the only host syncs of the loop
                        watch.check(run.stage)
                        record = {"stage": stage.label, "split": "train", "epoch": epoch, "step": run.step}
                        record.update(lr=lr, **_floats(losses))
                        if run.distilling:
                            record["signals"] = _floats(run.signals)
                        run.log.write(record)
                        status = f"loss {record['total']:.4f}"
                    run.step += 1
                    draw()
                train_loss = watch.epoch_mean(run.stage)
                if not _validates(epoch, epochs, cfg["train"]["eval_every"], run.stop_requested):
                    record = {"stage": stage.label, "split": "epoch", "epoch": epoch, "step": run.step}
                    record["train_loss"] = train_loss
                    run.pm.hook.kd_epoch_end(run=run, epoch=epoch, metrics=record)
                    run.log.write(record)
                    save_epoch(ended=False)
                    continue  # a stop requested now is honoured after the next epoch, which validates
                metrics = task.evaluate(model, val_loader, device, cfg)
                if task.main_metric not in metrics:
                    raise KeyError(
                        f"task {task.name!r} evaluate() returned no {task.main_metric!r}: {sorted(metrics)}"
                    )
                run.signals["val_metric"] = float(metrics[task.main_metric])
                run.pm.hook.kd_after_validation(run=run, epoch=epoch, metrics=metrics)
                record = {"stage": stage.label, "split": "val", "epoch": epoch, "step": run.step}
                record.update(train_loss=train_loss, **metrics)
                run.pm.hook.kd_epoch_end(run=run, epoch=epoch, metrics=record)
                run.log.write(record)
                value = float(metrics[task.main_metric])
                improved = _better(task, value, best)
                if improved:
                    best, best_epoch = value, epoch
                lines.append(
                    f"[{stage.label}] epoch {epoch + 1}/{epochs}  "
                    f"train loss {record['train_loss']:.4f}  val {task.main_metric} {value:.4f}"
                )
                save_epoch(run.stop_requested or epoch == epochs - 1, metrics, improved)
                if run.stop_requested:
                    break
        writer.wait()  # the last epoch's files are on disk before the stage reports and hands on
    except KeyboardInterrupt:
        # The weights of the moment, for `kd eval`; resuming restarts from the last finished epoch,
        # whose write is finished first.
        files.flush()
        writer.wait()
        if run.dist.is_main:
            state = _checkpoint_payload(run, stage, model, optimizer, {})
            save_checkpoint(ckpt_dir / f"{prefix}interrupted.pt", state)
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            files.flush()  # the finished epochs' files
            writer.wait()
        raise
    finally:
        if run.hints is not None:
            run.hints.close()
    summary = {
        "stage": stage.label,
        "split": "stage",
        "arch": stage.arch,
        "distilled": stage.distilled,
        "primary": stage.primary,
        "main_metric": task.main_metric,
        "best_metric": best,
        "best_epoch": best_epoch,
        "final_metric": value,
        "epochs": run.epoch + 1,
        "parameters": count_parameters(model),
        "seconds": round(time.perf_counter() - started, 3),
        "checkpoint": str(best_path.relative_to(run.run_dir)),
    }
    run.pm.hook.kd_fit_end(run=run, summary=summary)
    run.log.write(summary)
    if not run.dist.active:
        finished = {"stage": stage.label, "finished": True, "metrics_bytes": run.log.size()}
        save_resume_state(run.run_dir, {**finished, "run_seconds": time.perf_counter() - run.started_at})
    distributed.barrier(run.dist)  # rank 0 has written the best checkpoint
    # Hand the best weights on: a teacher or assistant teaches with its best epoch, not its last.
    model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    return model


class StageParts(NamedTuple):
    """What a stage trains with and a resume must restore, besides ``run`` itself."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedules: Mapping[str, Schedule]
    loader_generator: torch.Generator


def _stage_state(
    run: DistillRun,
    stage: Stage,
    bookkeeping: dict[str, Any],
    parts: StageParts,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything :func:`_restore_stage` needs to continue ``stage`` after the current epoch: the
    epoch's checkpoint (:func:`_checkpoint_payload`) and the rest of the training state."""
    plugins: dict[str, Any] = {}
    for part in run.pm.hook.kd_state_dict(run=run):
        plugins.update(part)
    return {
        **_checkpoint_payload(run, stage, parts.model, parts.optimizer, metrics),
        "stop_requested": run.stop_requested,
        "signals": _floats(run.signals),
        **bookkeeping,
        "run_seconds": time.perf_counter() - run.started_at,
        "metrics_bytes": run.log.size(),
        "scaler": parts.scaler.state_dict(),
        "schedules": {name: schedule.state_dict() for name, schedule in parts.schedules.items()},
        "hints": run.hints.state_dict() if run.hints is not None else {},
        "plugins": plugins,
        "rng": capture_rng(parts.loader_generator),
    }


def _restore_stage(
    run: DistillRun, state: Mapping[str, Any], parts: StageParts
) -> tuple[float | None, int, float, float]:
    """Load a :func:`_stage_state` into this stage; return best, best epoch, last metric and seconds."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scaler.load_state_dict(state["scaler"])
    for name, schedule in parts.schedules.items():
        schedule.load_state_dict(state["schedules"].get(name, {}))
    if run.hints is not None:
        run.hints.load_state_dict(state["hints"])
    run.pm.hook.kd_load_state_dict(run=run, state=state["plugins"])
    run.epoch, run.step, run.stop_requested = state["epoch"], state["step"], state["stop_requested"]
    run.signals.update(state["signals"])
    restore_rng(state["rng"], parts.loader_generator)
    return state["best"], state["best_epoch"], state["value"], state["seconds"]


def _checkpoint_payload(
    run: DistillRun, stage: Stage, model: nn.Module, optimizer: torch.optim.Optimizer, metrics
) -> dict:
    """What ``kd eval``, ``--resume`` and a later stage read from any checkpoint of ``stage``."""
    return {
        "stage": stage.label,
        "arch": stage.arch,
        "plugin": run.task.plugin,
        "task": run.task.name,
        "epoch": run.epoch,
        "step": run.step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "data_info": _stage_info(run, stage),
    }


class StepPlan(NamedTuple):
    """What a training step needs that stays the same through a stage, worked out once per stage: each
    item would cost a few microseconds on every step otherwise (BENCHMARKS.md, engine overhead).

    The four step hooks go through :func:`kdcore.plugins.direct_caller`. ``precision`` is the forward
    passes' autocast context (:func:`_autocast`), entered anew on each step. ``fixed`` holds the
    temperature and alpha when both schedules are constants (the step then calls neither), else None.
    ``weights`` maps a distillation term to its ``distill.weights`` schedule."""

    step_start: Callable[..., Any]
    soft_targets: Callable[..., Any]
    distill_loss: Callable[..., Any]
    step_end: Callable[..., Any]
    precision: contextlib.AbstractContextManager
    fixed: tuple[float, float] | None
    weights: Mapping[str, Schedule]
    grad_clip: float

    @classmethod
    def of(cls, run: DistillRun, schedules: Mapping[str, Schedule]) -> StepPlan:
        names = ("kd_step_start", "kd_soft_targets", "kd_distill_loss", "kd_step_end")
        hooks = (direct_caller(getattr(run.pm.hook, name)) for name in names)
        temperature, alpha = schedules.get("temperature"), schedules.get("alpha")
        fixed = None
        if isinstance(temperature, Constant) and isinstance(alpha, Constant):
            fixed = temperature.value, float(alpha.value)
        weights = {name[len("weight:") :]: s for name, s in schedules.items() if name.startswith("weight:")}
        return cls(*hooks, _autocast(run), fixed, weights, run.config["train"]["grad_clip"])


def _train_step(
    run: DistillRun,
    plan: StepPlan,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedules: dict[str, Schedule],
    batch: Any,
    window: int = 1,
    last_in_window: bool = True,
    cached: tuple[TeacherCache, torch.Tensor] | None = None,
    signals: bool = True,
) -> dict[str, float | torch.Tensor]:
    """One batch: forward, losses, backward of ``total / window``; the optimiser steps on the last batch
    of each accumulation window (``train.accumulate`` batches; fewer at the end of an epoch). With
    ``cached`` (the cache and the batch's item indices) the teacher runs only for items not cached yet.

    ``signals``: compute this step's ``agreement`` and ``loss_ratio`` signals. Returns the step's losses as
    detached 0-dim tensors (and the temperature and alpha): nothing here waits for the device; the stage
    reads them at its log points."""
    task = run.task
    plan.step_start(run=run, step=run.step, batch=batch)
    inputs, targets = task.split_batch(batch)
    with plan.precision:
        outputs = model(inputs)
        supervised = task.supervised_loss(outputs, targets)
        losses: dict[str, float | torch.Tensor] = {"supervised": supervised.detach()}
        if run.distilling:
            if plan.fixed is None:
                progress = run.progress
                run.temperature = schedules["temperature"](progress, run.signals)
                run.alpha = float(schedules["alpha"](progress, run.signals))
            teacher_outputs = cached[0].lookup(cached[1], run.device) if cached else None
            if teacher_outputs is None:
                teacher_outputs = plan.soft_targets(run=run, inputs=inputs, batch=batch)
                if cached:
                    cached[0].store(cached[1], teacher_outputs)
            terms = plan.distill_loss(
                run=run, student_outputs=outputs, teacher_outputs=teacher_outputs, batch=batch
            )
            distill = _distill_sum(terms, plan.weights, run)
            total = (1.0 - run.alpha) * supervised + run.alpha * distill
            clash = RESERVED_LOG_KEYS.intersection(terms)
            if clash:
                raise ValueError(
                    f"a kd_distill_loss term is named {sorted(clash)[0]!r}, a name kdcore logs itself "
                    f"({', '.join(sorted(RESERVED_LOG_KEYS))}); rename it"
                )
            for name, value in terms.items():
                losses[name] = _detached(value)
            if signals:
                agreement = _agreement(outputs, teacher_outputs)
                if agreement is not None:
                    run.signals["agreement"] = agreement
                floor = losses["supervised"].clamp_min(1e-12)
                run.signals["loss_ratio"] = distill.detach() / floor
            losses["temperature"], losses["alpha"] = _detached(run.temperature), run.alpha
        else:
            total = supervised
    scaling = scaler.is_enabled()
    loss = total / window if window > 1 else total
    (scaler.scale(loss) if scaling else loss).backward()
    if last_in_window:
        if plan.grad_clip > 0:
            if scaling:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        if scaling:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    losses = {"total": total.detach(), **losses}
    plan.step_end(run=run, step=run.step, losses=losses)
    return losses


def _autocast(run: DistillRun) -> contextlib.AbstractContextManager:
    """The forward passes' precision: autocast to ``run.amp_dtype``; without one, full precision. Then
    ``torch.autocast(enabled=False)`` is needed only inside an autocast region someone else opened (around
    ``fit``, say), which it turns off; elsewhere it would cost 3.5 us a step for nothing."""
    device_type = run.device.type
    if run.amp_dtype is not None:
        return torch.autocast(device_type, dtype=run.amp_dtype)
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _window(index: int, batches: int, accumulate: int) -> tuple[int, bool]:
    """Size of the accumulation window holding batch ``index`` of an epoch, and whether it is its last."""
    start = index - index % accumulate
    size = min(accumulate, batches - start)
    return size, index == start + size - 1


def _detached(value: float | torch.Tensor) -> float | torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _floats(values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """``values`` as plain floats, in their order: for log points and checkpoints only. The one-element
    tensors of each accelerator are read back together: one host sync, not one sync each (on the CPU,
    where there is nothing to wait for, one by one, which costs less)."""
    floats: dict[str, float] = {}
    by_device: dict[torch.device, list[str]] = {}
    for name, value in values.items():
        floats[name] = math.nan  # keeps the order
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            by_device.setdefault(value.device, []).append(name)
        else:
            floats[name] = float(value.detach() if getattr(value, "requires_grad", False) else value)
    for names in by_device.values():
        read = torch.stack([values[name].detach().reshape(()) for name in names]).tolist()
        floats.update(zip(names, map(float, read), strict=True))
    return floats


class LossWatch:
    """Every step's total loss since the last :meth:`check`, kept on the device, and the epoch's sum.

    ``update`` keeps a reference to the step's detached loss: no operation and no host sync, on a GPU
    too (before, a finiteness test kept on the device took about ten kernel launches a step, then a copy
    into a buffer one). ``check``, at log points and at the end of every epoch (before validation and
    checkpoints), reads the losses back in one go, raises naming the first step whose loss was not
    finite, and adds them to the epoch's sum; ``epoch_mean`` returns the epoch's mean loss and starts the
    next. A window that fills before its check (``log_every`` longer than an epoch) is read when it fills.
    """

    def __init__(self, window: int) -> None:
        self.window = min(window, 1024)
        self.totals: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.first_bad: tuple[int, float] | None = None
        self.epoch_sum, self.epoch_steps = 0.0, 0

    def update(self, total: torch.Tensor, step: int) -> None:
        """Keep ``total``, the step's detached total loss (the step's ``losses["total"]``)."""
        if len(self.steps) == self.window:
            self._read()
        self.totals.append(total)
        self.steps.append(step)

    def check(self, stage: str) -> None:
        self._read()
        if self.first_bad is not None:
            step, value = self.first_bad
            raise FloatingPointError(
                f"stage {stage!r} step {step}: the loss is {value}; lower the learning rate "
                f"({stage} lr) or check the data (with PyTorch's cross-entropy, a batch whose every "
                "target is its ignore_index gives nan: kdcore.losses.hard_label_ce gives 0 there)"
            )

    def epoch_mean(self, stage: str) -> float:
        """The mean total loss of the epoch's steps (checked first); the next epoch starts from zero."""
        self.check(stage)
        mean = self.epoch_sum / max(1, self.epoch_steps)
        self.epoch_sum, self.epoch_steps = 0.0, 0
        return mean

    def _read(self) -> None:
        if not self.steps:
            return
        values = torch.stack(self.totals).flatten().tolist()
        if self.first_bad is None:
            self.first_bad = next(
                ((step, v) for step, v in zip(self.steps, values, strict=True) if not math.isfinite(v)), None
            )
        self.epoch_sum += sum(values)
        self.epoch_steps += len(values)
        self.totals.clear()
        self.steps.clear()


def _distill_sum(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, Schedule], run: DistillRun
) -> torch.Tensor:
    """The distillation terms summed, each times its ``distill.weights`` schedule (no multiplication for a
    term without one, no addition for a single term)."""
    values = [
        value if (weight := weights.get(name)) is None else weight(run.progress, run.signals) * value
        for name, value in terms.items()
    ]
    if not values:
        return torch.zeros((), device=run.device)
    return values[0] if len(values) == 1 else sum(values[1:], start=values[0])
