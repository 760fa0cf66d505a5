"""The run's comparison on the target's test pairs: every stage's final model, the source model applied
as is, the classic recordlinkage baselines and blocking's ceiling, as a table, ``report/dedup.json`` and a
precision-recall plot (``report/precision_recall.png``).

The ceiling row scores the test pairs with their own labels: precision 1 and recall equal to the pairs
completeness of blocking, so its F1 is the most any matcher can reach on these candidate pairs. A model
close to it has nothing left to gain from a better classifier, only from better blocking.

Each stage's figures are written when it ends (``report/dedup/<stage>.json``), so a resumed run keeps
those of the stages it does not retrain; the classic baselines are computed once per run and kept in
``report/dedup/classic.json``. They use the same candidate pairs, threshold and labelled target pairs as
the students (:mod:`kd_dedup.baselines`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import precision_recall_curve

from kd_dedup.data import UNLABELLED, PairSet
from kd_dedup.evaluation import match_metrics
from kdcore.checkpoint import atomic_write_text

#: Row names of the comparison, in the order they are printed.
ROW_NAMES = {
    "teacher": "source model as is",
    "baseline": "target labels only",
    "logistic_regression": "RL logistic regr.",
    "ecm": "RL ECM (unsuperv.)",
    "ceiling": "blocking's ceiling",
}
#: Rows printed after the stages, in this order.
TRAILING_ROWS = ("logistic_regression", "ecm", "ceiling")
HEADERS = {
    "f1": "F1",
    "precision": "prec.",
    "recall": "recall",
    "average_precision": "AP",
    "cluster_f1": "clu. F1",
    "ari": "ARI",
}
CURVE_POINTS = 200


def stage_dir(run_dir: Path) -> Path:
    """Where the per-stage figures live."""
    return Path(run_dir) / "report" / "dedup"


def curve(pairs: PairSet, scores: np.ndarray) -> dict[str, list[float]]:
    """At most :data:`CURVE_POINTS` points of the precision-recall curve (recall over all true pairs)."""
    truth = pairs.labels.numpy()
    precision, recall, _ = precision_recall_curve(truth, scores)
    recall = recall * truth.sum() / max(1, truth.sum() + pairs.missed_true_pairs)
    keep = np.unique(np.linspace(0, len(recall) - 1, min(CURVE_POINTS, len(recall))).round().astype(int))
    return {"precision": precision[keep].round(5).tolist(), "recall": recall[keep].round(5).tolist()}


def row_path(run_dir: Path, name: str) -> Path:
    """The file of one row's figures."""
    return stage_dir(run_dir) / f"{name.replace('/', '.')}.json"


def has_row(run_dir: Path, name: str) -> bool:
    """Whether ``name``'s figures are already recorded (a resumed run keeps them)."""
    return row_path(run_dir, name).is_file()


def record(run_dir: Path, name: str, pairs: PairSet, scores: np.ndarray, threshold: float) -> dict:
    """Score ``name`` on the test pairs and write its figures; return the metrics."""
    metrics = match_metrics(pairs, scores, threshold)
    entry = {"name": name, "metrics": metrics, "curve": curve(pairs, scores)}
    path = row_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entry, indent=1) + "\n")
    return metrics


def ceiling_row(run_dir: Path, test: PairSet, threshold: float) -> None:
    """Record the ceiling: the test pairs scored with their own labels (see the module docstring)."""
    if not has_row(run_dir, "ceiling"):
        record(run_dir, "ceiling", test, test.labels.numpy().astype(np.float64), threshold)


def classic_rows(run_dir: Path, train: PairSet, test: PairSet, threshold: float, seed: int) -> None:
    """Compute and record the recordlinkage baselines once per run."""
    from kd_dedup.baselines import classic_baselines

    if has_row(run_dir, "ecm"):
        return
    labelled = (train.labels != UNLABELLED).numpy()
    columns = list(train.table.columns)
    # Both tables in one frame: the baselines index records by position, the test's after the pool's.
    frame = _stacked(train, test)
    offset = len(train.table)
    scores = classic_baselines(
        frame,
        columns,
        train.pairs.numpy()[labelled],
        train.labels.numpy()[labelled],
        test.pairs.numpy() + offset,
        seed=seed,
    )
    for name, values in scores.items():
        record(run_dir, name, test, np.asarray(values, dtype=np.float64), threshold)


def _stacked(train: PairSet, test: PairSet):
    import pandas as pd

    return pd.concat([train.table.records, test.table.records], ignore_index=True)


def load_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded row, stages first (in the order they finished), then :data:`TRAILING_ROWS`."""
    folder = stage_dir(run_dir)
    rows = [
        json.loads(p.read_text()) for p in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    ]
    trailing = [r for name in TRAILING_ROWS for r in rows if r["name"] == name]
    return [r for r in rows if r["name"] not in TRAILING_ROWS] + trailing


def label(name: str) -> str:
    """The printed name of a row."""
    if name in ROW_NAMES:
        return ROW_NAMES[name]
    variant, _, stage = name.rpartition("/")
    if stage == "student":
        return f"KD student ({variant})" if variant else "transfer student"
    return name


def write_blocking(run_dir: Path, blocking: Mapping[str, Any]) -> None:
    """Write ``report/blocking.json``: how blocking did on each labelled pair set of the run."""
    path = Path(run_dir) / "report" / "blocking.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(blocking, indent=1) + "\n")


def write_comparison(run_dir: Path, console: Console | None = None) -> list[dict[str, Any]]:
    """Write ``report/dedup.json`` and ``report/precision_recall.png`` from the recorded rows; print the
    table (and how blocking did on the test pairs, from ``report/blocking.json``) on ``console``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(run_dir)
    if not rows:
        return rows
    report = Path(run_dir) / "report"
    summary = [{"name": r["name"], "label": label(r["name"]), **r["metrics"]} for r in rows]
    atomic_write_text(report / "dedup.json", json.dumps(summary, indent=1) + "\n")
    figure, axis = plt.subplots(figsize=(6, 5))
    for r in rows:
        axis.plot(
            r["curve"]["recall"],
            r["curve"]["precision"],
            label=f"{label(r['name'])} (F1 {r['metrics']['f1']:.3f})",
        )
    axis.set(
        xlabel="recall (blocking losses count as misses)", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01)
    )
    axis.set_title("target test pairs")
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    tmp = report / ".precision_recall.png.tmp"
    figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    tmp.replace(report / "precision_recall.png")
    if console is not None:
        console.print(comparison_table(summary))
        blocking_file = report / "blocking.json"
        if blocking_file.is_file():
            test = json.loads(blocking_file.read_text())["target test"]
            console.print(
                f"blocking on the test records: {test['candidate_pairs']:,} candidate pairs of "
                f"{test['records']:,} records, pairs completeness {test['pairs_completeness']:.4f}, "
                f"reduction ratio {test['reduction_ratio']:.4f}"
            )
    return summary


def comparison_table(summary: list[Mapping[str, Any]]) -> Table:
    """The rows side by side: F1, precision, recall, average precision and the clusters' F1 and ARI."""
    table = Table(title="target test pairs, final epochs (RL: recordlinkage)")
    columns = ("f1", "precision", "recall", "average_precision", "cluster_f1", "ari")
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(HEADERS[column], justify="right", no_wrap=True)
    for row in summary:
        table.add_row(row["label"], *(f"{row[c]:.4f}" if c in row else "" for c in columns))
    return table
