"""A run's report, drawn from its ``metrics.jsonl`` alone: PNG curves and ``summary.json``.

``kd report RUN_DIR`` calls :func:`write_report` again, so a report can always be redrawn.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kdcore.checkpoint import atomic_write, atomic_write_text


class ReportError(RuntimeError):
    """A run directory lacks the files a report is drawn from."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``RUN_DIR/metrics.jsonl``; a torn last line (a killed run) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} does not exist: is {run_dir} a kd run directory?")
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ReportError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return records


def build_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage results, the main metric, and the students' gains over the no-KD baseline.

    ``student_minus_baseline`` is the primary student's gain; with variants, ``variants`` maps each
    variant to its student's best metric and gain (a positive gain is better when higher is better).
    """
    stages: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {"main_metric": None, "stages": stages}
    for record in records:
        if record.get("split") == "stage":
            stages[record["stage"]] = {k: v for k, v in record.items() if k not in ("split", "stage")}
            summary["main_metric"] = record.get("main_metric", summary["main_metric"])
        elif record.get("split") == "run":
            summary.update({k: v for k, v in record.items() if k != "split"})
    baseline = stages.get("baseline")
    variants = {}
    for label, stage in stages.items():
        variant, _, role = label.rpartition("/")
        if role != "student":
            continue
        gain = None
        if baseline and None not in (stage["best_metric"], baseline["best_metric"]):
            gain = stage["best_metric"] - baseline["best_metric"]
        if variant:
            variants[variant] = {"best_metric": stage["best_metric"], "minus_baseline": gain}
        if (stage.get("primary") or not variant) and gain is not None:
            summary["student_minus_baseline"] = gain
    if variants:
        summary["variants"] = variants
    return summary


def _figure_bytes(fig: Figure) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _save(fig: Figure, path: Path) -> Path:
    data = _figure_bytes(fig)
    return atomic_write(path, lambda fh: fh.write(data))


def _series(
    records: Iterable[dict[str, Any]], split: str, key: str, table: str | None = None
) -> dict[str, tuple[list, list]]:
    """Per stage, the x (step or epoch) and y values of ``record[key]`` (or ``record[table][key]``)."""
    out: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    x_key = "step" if split == "train" else "epoch"
    for record in records:
        values = record.get(table, {}) if table else record
        if record.get("split") == split and key in values:
            xs, ys = out[record["stage"]]
            xs.append(record[x_key] + (1 if split == "val" else 0))
            ys.append(values[key])
    return dict(out)


def _signal_names(records: Iterable[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        if record.get("split") == "train":
            names.update(dict.fromkeys(record.get("signals", {})))
    return list(names)


def _plot(
    path: Path, title: str, xlabel: str, panels: list[tuple[str, dict[str, tuple[list, list]]]]
) -> Path:
    fig = Figure(figsize=(6.4, 3.2 * len(panels)))
    for i, (ylabel, series) in enumerate(panels, 1):
        ax = fig.add_subplot(len(panels), 1, i)
        for stage, (xs, ys) in series.items():
            ax.plot(xs, ys, label=stage, marker="." if len(xs) < 30 else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Draw ``report/losses.png``, ``metric.png``, ``schedules.png``, ``signals.png`` (when a distilled
    stage logged signals: agreement, loss ratio, validation metric, plugins' own) and ``summary.json``."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    summary = build_summary(records)
    report = run_dir / "report"
    metric = summary["main_metric"] or "metric"
    _plot(
        report / "losses.png", "training loss", "step", [("total loss", _series(records, "train", "total"))]
    )
    _plot(report / "metric.png", f"validation {metric}", "epoch", [(metric, _series(records, "val", metric))])
    _plot(
        report / "schedules.png",
        "values used during distillation",
        "step",
        [
            ("temperature", _series(records, "train", "temperature")),
            ("alpha", _series(records, "train", "alpha")),
        ],
    )
    signals = _signal_names(records)
    if signals:
        _plot(
            report / "signals.png",
            "signals during distillation",
            "step",
            [(name, _series(records, "train", name, table="signals")) for name in signals],
        )
    atomic_write_text(report / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
