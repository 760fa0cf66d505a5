"""Resuming an interrupted run: what is saved after every epoch, and how a run directory is picked up.

After each epoch of a stage the engine writes ``checkpoints/resume.pt`` (atomically): the model, the
optimizer, the gradient scaler, the schedules' and feature hints' state, the stage's bookkeeping (step,
best metric, signals, seconds so far), every random generator the run draws from (Python's, NumPy's,
torch's CPU and CUDA generators, the training loader's shuffling generator), each plugin's own state
(``kd_state_dict``), and the length of ``metrics.jsonl`` at that point. It carries everything a
checkpoint carries too, so after a validation the engine makes ``last.pt`` (and ``best.pt``) hard links
of it instead of serialising the model again.

``kd train --resume RUN_DIR`` then keeps the stages already finished (their ``split: stage`` records
and best checkpoints), cuts ``metrics.jsonl`` back to that length (dropping the records of the
interrupted epoch), and continues the stage from the epoch after the saved one with the saved state
restored. On a CPU the resumed run ends with the same weights, bit for bit, as an uninterrupted run.

Everything is stored as tensors, numbers, strings, lists and dicts, so the file loads with
``torch.load(..., weights_only=True)`` like every kdcore checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcore.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint

RESUME_FILE = "resume.pt"


class ResumeError(RuntimeError):
    """The run directory cannot be resumed; the message says why and what to do instead."""


def pack_numpy_state(state: tuple) -> list[Any]:
    """A NumPy ``RandomState`` state tuple as weights-only-loadable values (its key array as a tensor)."""
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]


def unpack_numpy_state(saved: list[Any]) -> tuple:
    """The inverse of :func:`pack_numpy_state`, for ``RandomState.set_state``."""
    name, keys, pos, has_gauss, cached = saved
    return (name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached)


def capture_rng(loader_generator: torch.Generator) -> dict[str, Any]:
    """The state of every random generator a stage draws from, as weights-only-loadable values.

    Python's 625 state words are one int64 tensor, not a list: ``torch.save`` pickles a list item by
    item, which made them 60 % of the time it took to serialise a small model's resume state."""
    version, state, gauss = random.getstate()
    return {
        "python": [version, torch.from_numpy(np.fromiter(state, dtype=np.int64, count=len(state))), gauss],
        "numpy": pack_numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def restore_rng(saved: Mapping[str, Any], loader_generator: torch.Generator) -> None:
    """Put every generator back to the state :func:`capture_rng` recorded.

    Generator states are CPU byte tensors whatever the run's device: the resume file is loaded onto
    that device (a GPU for a GPU run), so they are brought back first.
    """
    version, state, gauss = saved["python"]
    words = state.tolist() if isinstance(state, torch.Tensor) else state  # a list in older resume files
    random.setstate((version, tuple(words), gauss))
    np.random.set_state(unpack_numpy_state(saved["numpy"]))
    torch.set_rng_state(saved["torch"].cpu())
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in saved["cuda"]])
    loader_generator.set_state(saved["loader"].cpu())


def resume_path(run_dir: Path) -> Path:
    """Where a run keeps the state it resumes from: ``checkpoints/resume.pt``."""
    return run_dir / "checkpoints" / RESUME_FILE


def save_resume_state(run_dir: Path, state: Mapping[str, Any]) -> Path:
    """Atomically write ``checkpoints/resume.pt`` (a kdcore checkpoint when ``state`` has a model)."""
    return save_checkpoint(resume_path(run_dir), state)


def load_resume_state(run_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """The saved state of the interrupted stage, or None when no stage had finished an epoch."""
    path = resume_path(run_dir)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a torn file is impossible (atomic writes); a foreign one is not
        raise CheckpointError(f"{path} could not be read: {exc}") from exc


def finished_stages(records: list[dict[str, Any]]) -> set[str]:
    """Labels of the stages whose ``split: stage`` record is in the metrics: they are not trained again."""
    return {r["stage"] for r in records if r.get("split") == "stage"}


def check_resumable(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Refuse a directory that is not a kd run, or a run that already finished."""
    if not (run_dir / "config.toml").is_file():
        raise ResumeError(f"{run_dir} has no config.toml: it is not a kd run directory")
    if any(r.get("split") == "run" for r in records):
        raise ResumeError(f"{run_dir} finished already (its metrics.jsonl has the 'run' record)")


def truncate_metrics(path: Path, length: int) -> None:
    """Cut ``metrics.jsonl`` back to its first ``length`` bytes (atomically), dropping later records."""
    data = path.read_bytes()
    if len(data) < length:
        raise ResumeError(
            f"{path} is shorter ({len(data)} bytes) than when {RESUME_FILE} was written ({length} bytes): "
            "the metrics were edited or replaced, so the run cannot be resumed consistently"
        )
    atomic_write(path, lambda fh: fh.write(data[:length]))


def load_stage_weights(path: Path, device: torch.device) -> dict[str, Any]:
    """The best weights of a finished stage; a missing file is a :class:`ResumeError` naming it."""
    try:
        return load_checkpoint(path, map_location=device)["model"]
    except CheckpointError as exc:
        raise ResumeError(f"cannot resume: the finished stage's checkpoint is unusable: {exc}") from exc
