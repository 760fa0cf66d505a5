"""The sweep's results: test accuracy per recipe and label budget N, mean and spread over label seeds.

Each student stage writes its final test accuracy to ``report/sensor/<variant>.json`` when it ends (a
resumed run keeps the stages it does not retrain). Once every variant of the run has one, the table is
printed and written to ``report/sensor.json``, and ``report/accuracy_vs_labels.png`` plots accuracy
against N for each recipe (mean, with the range over seeds as a band).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdcore.checkpoint import atomic_write_text
from kdcore.config import read_toml

RECIPE_NAMES = {
    "no_kd": "no KD (labels only)",
    "kd": "KD",
    "kd_anneal": "KD + annealed alpha",
    "kd_selective": "KD + selective",
}


def variant_name(labels: int, seed: int, recipe: str) -> str:
    """``n10_s0_kd``; N = 0 (every label) is ``nall``."""
    return f"n{labels or 'all'}_s{seed}_{recipe}"


def record(run_dir: Path, variant: str, options: Mapping[str, Any], recipe: str, accuracy: float) -> None:
    """Write one stage's result."""
    row = {"variant": variant, "labels": int(options["labels"]), "seed": int(options["label_seed"])}
    row.update(recipe=recipe, accuracy=float(accuracy))
    path = Path(run_dir) / "report" / "sensor" / f"{variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(row) + "\n")


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded stage result of the run."""
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "report" / "sensor").glob("*.json"))]


def complete(run_dir: Path) -> bool:
    """Whether every variant in the run's ``config.toml`` has its result."""
    expected = set(read_toml(Path(run_dir) / "config.toml")["variants"])
    return expected <= {row["variant"] for row in rows(run_dir)}


def summarise(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, standard deviation, min and max accuracy per (recipe, N) over the seeds."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in found:
        groups.setdefault((row["recipe"], row["labels"]), []).append(row["accuracy"])
    order = {name: i for i, name in enumerate(RECIPE_NAMES)}
    summary = []
    for (recipe, labels), values in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1] or 10**9)
    ):
        summary.append(
            {
                "recipe": recipe,
                "labels": labels,
                "seeds": len(values),
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
        )
    return summary


def write(run_dir: Path, console: Console | None = None) -> list[dict[str, Any]]:
    """``report/sensor.json``, the plot and (on ``console``) the table, from the recorded results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows(run_dir))
    report = Path(run_dir) / "report"
    atomic_write_text(report / "sensor.json", json.dumps(summary, indent=1) + "\n")
    budgets = sorted({s["labels"] for s in summary}, key=lambda n: n or 10**9)
    positions = {n: i for i, n in enumerate(budgets)}
    figure, axis = plt.subplots(figsize=(6, 4))
    for recipe in dict.fromkeys(s["recipe"] for s in summary):
        mine = [s for s in summary if s["recipe"] == recipe]
        x = [positions[s["labels"]] for s in mine]
        axis.plot(x, [s["mean"] for s in mine], marker="o", label=RECIPE_NAMES.get(recipe, recipe))
        axis.fill_between(x, [s["min"] for s in mine], [s["max"] for s in mine], alpha=0.15)
    axis.set_xticks(range(len(budgets)), [str(n or "all") for n in budgets])
    axis.set(xlabel="labelled new-sensor images (N)", ylabel="test accuracy (new sensor)", ylim=(0, 1))
    axis.set_title("mean over label seeds; band: min to max")
    axis.legend(fontsize=8)
    figure.tight_layout()
    tmp = report / ".accuracy_vs_labels.png.tmp"
    figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    tmp.replace(report / "accuracy_vs_labels.png")
    if console is not None:
        console.print(table(summary, budgets))
    return summary


def table(summary: list[Mapping[str, Any]], budgets: list[int]) -> Table:
    """Recipes by label budget: mean ± sd over seeds."""
    grid = Table(title="new-sensor test accuracy (final epoch), mean ± sd over label seeds")
    grid.add_column("recipe", no_wrap=True)
    for n in budgets:
        grid.add_column(f"N = {n or 'all'}", justify="right", no_wrap=True)
    for recipe in dict.fromkeys(s["recipe"] for s in summary):
        cells = {s["labels"]: s for s in summary if s["recipe"] == recipe}
        grid.add_row(
            RECIPE_NAMES.get(recipe, recipe),
            *(
                (
                    f"{cells[n]['mean']:.3f} ± {cells[n]['sd']:.3f}"
                    if cells[n]["seeds"] > 1
                    else f"{cells[n]['mean']:.3f}"
                )
                if n in cells
                else ""
                for n in budgets
            ),
        )
    return grid
