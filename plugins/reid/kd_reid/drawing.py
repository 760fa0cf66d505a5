"""Pictures for the report: the searched cells, and ranked gallery lists for a few queries (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kd_reid.search_space import Genotype
from kdcore.checkpoint import atomic_write


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)
    return path


def draw_genotype(genotype: Genotype, path: str | Path, title: str = "") -> Path:
    """Both cells of ``genotype`` side by side: inputs ``c[k-2]``, ``c[k-1]``, nodes, the concatenated
    output, and each chosen edge labelled with its operation. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, (kind, edges) in zip(
        axes, (("normal", genotype.normal), ("reduce", genotype.reduce)), strict=True
    ):
        steps = len(edges) // 2
        positions = {0: (0.0, 0.75), 1: (0.0, 0.25)}
        for node in range(steps):
            positions[2 + node] = (1.0 + node, 0.9 - 0.8 * node / max(1, steps - 1))
        output = (steps + 1.2, 0.5)
        axis.set_xlim(-0.4, steps + 1.7)
        axis.set_ylim(0.0, 1.0)
        for index, (op, source) in enumerate(edges):
            _curved_edge(axis, positions[source], positions[2 + index // 2], op)
        for node in range(steps):
            x, y = positions[2 + node]
            axis.annotate(
                "", xy=output, xytext=(x, y), arrowprops={"arrowstyle": "->", "color": "0.75", "ls": ":"}
            )
        labels = {0: "c[k-2]", 1: "c[k-1]", **{2 + n: str(n) for n in range(steps)}}
        for node, (x, y) in positions.items():
            colour = "#9ecae1" if node < 2 else "#fdd49e"
            axis.text(
                x,
                y,
                labels[node],
                ha="center",
                va="center",
                fontsize=9,
                bbox={"boxstyle": "round,pad=0.35", "fc": colour, "ec": "0.3"},
            )
        axis.text(
            *output,
            "c[k]\n(concat)",
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.35", "fc": "#c7e9c0", "ec": "0.3"},
        )
        axis.set_title(f"{kind} cell")
        axis.axis("off")
    if title:
        figure.suptitle(title)
    return _save(figure, Path(path))


def _curved_edge(axis, start: tuple[float, float], end: tuple[float, float], label: str) -> None:
    """An arrow bent to the side (edges between nodes on one line stay apart), labelled at its middle."""
    bend = 0.25
    axis.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": "->", "color": "0.35", "connectionstyle": f"arc3,rad={bend}"},
    )
    # matplotlib bends arc3 in display coordinates: the curve's middle is the chord's middle moved by
    # bend / 2 times the chord turned clockwise
    (x0, y0), (x1, y1) = axis.transData.transform(start), axis.transData.transform(end)
    middle = ((x0 + x1) / 2 + bend / 2 * (y1 - y0), (y0 + y1) / 2 - bend / 2 * (x1 - x0))
    x, y = axis.transData.inverted().transform(middle)
    axis.text(
        x,
        y,
        label,
        fontsize=7,
        ha="center",
        va="center",
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
    )


def draw_ranked_lists(
    query_images: torch.Tensor,
    gallery_images: torch.Tensor,
    ranked: np.ndarray,
    correct: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """One row per query: the query image, then its top gallery matches framed green (same person) or
    red. ``query_images`` ``[Q, 3, H, W]`` and ``gallery_images`` ``[Q, top, 3, H, W]`` are ``uint8``;
    ``ranked`` and ``correct`` ``[Q, top]`` hold gallery indices and match flags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, top = ranked.shape
    figure, axes = plt.subplots(rows, top + 1, figsize=(1.1 * (top + 1), 2.1 * rows), squeeze=False)
    for row in range(rows):
        cells: Sequence = axes[row]
        cells[0].imshow(query_images[row].permute(1, 2, 0).numpy())
        cells[0].set_title("query", fontsize=8)
        for column in range(top):
            axis = cells[column + 1]
            axis.imshow(gallery_images[row, column].permute(1, 2, 0).numpy())
            colour = "#2ca02c" if correct[row, column] else "#d62728"
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            axis.set_title(str(column + 1), fontsize=8)
        for axis in cells:
            axis.set_xticks([])
            axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, Path(path))
