"""The work of ``kd dedup apply`` (:mod:`kd_dedup.commands`): read, block, score, cluster, write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

from kd_dedup.blocking import candidate_pairs, knn_pairs, union_pairs
from kd_dedup.clustering import ceiling_f1, cluster_metrics, cluster_records, pair_metrics
from kd_dedup.data import blocking_passes
from kd_dedup.encoding import encode_records
from kd_dedup.model import encode_table, matcher_from_state, score_pairs
from kd_dedup.tables import RecordTable, load_table
from kdcore.checkpoint import load_checkpoint
from kdcore.config import read_toml
from kdcore.engine import select_device


def apply_run(
    run_dir: Path,
    input_path: str,
    output: Path,
    pairs_output: Path | None,
    checkpoint: str,
    threshold: float | None,
    id_column: str | None,
    entity_column: str,
    overwrite: bool,
    device: str,
) -> None:
    """Match and cluster the records of ``input_path`` with the matcher of ``run_dir``; print a summary."""
    config = read_toml(run_dir / "config.toml")
    options = config["options"]
    state = load_checkpoint(run_dir / checkpoint)
    info = state["data_info"]
    columns, max_length = list(info["columns"]), int(info["max_length"])
    threshold = float(options["threshold"] if threshold is None else threshold)
    table = load_table(
        input_path, columns=columns, id_column=id_column or options["id_column"], entity_column=entity_column
    )
    targets = [p for p in (output, pairs_output) if p is not None]
    _check_outputs(targets, _input_files(input_path), overwrite)

    torch_device = select_device(device)
    model = matcher_from_state(state, config).to(torch_device)
    encoded = encode_table(model, encode_records(table.records, columns, max_length), torch_device)
    pairs = propose_pairs(table, encoded, blocking_passes(options, columns), int(options["knn"]))
    scores = score_pairs(model, encoded, torch.from_numpy(pairs)).numpy()
    entity = cluster_records(len(table), pairs, scores, threshold)

    out = table.records[["id"]].copy()
    if table.linkage:
        out.insert(1, "table", np.where(table.side == 0, "a", "b"))
    out["entity_id"] = entity
    out = pd.concat([out, table.records[columns]], axis=1)
    _write_csv(out, output)
    matched = scores >= threshold
    if pairs_output is not None:
        ids = table.records["id"].to_numpy()
        found = pd.DataFrame(
            {
                "id_a": ids[pairs[matched, 0]],
                "id_b": ids[pairs[matched, 1]],
                "score": scores[matched].round(6),
            }
        ).sort_values("score", ascending=False, kind="stable")
        _write_csv(found, pairs_output)
    click.echo(
        f"{len(table):,} records, {len(pairs):,} candidate pairs, {int(matched.sum()):,} matches, "
        f"{int(entity.max()) + 1 if len(entity) else 0:,} entities -> {output}"
    )
    if table.entity is not None:
        truth = table.true_pairs()
        pairwise = pair_metrics(pairs[matched], truth)
        proposed = pair_metrics(pairs, truth)["recall"]  # pairs completeness of blocking + neighbours
        clusters = cluster_metrics(entity, table.entity, table.side)
        click.echo(
            f"against the input's ground truth: pairwise F1 {pairwise['f1']:.4f} (precision "
            f"{pairwise['precision']:.4f}, recall {pairwise['recall']:.4f}); "
            f"clusters F1 {clusters['f1']:.4f}, "
            f"ARI {clusters['ari']:.4f}; the candidate pairs (blocking and neighbours) held "
            f"{proposed:.4f} of the true pairs, so no matcher passes pairwise F1 "
            f"{ceiling_f1(proposed):.4f} on them"
        )


def propose_pairs(table: RecordTable, encoded: torch.Tensor, passes, knn: int) -> np.ndarray:
    """Blocking passes plus ``knn`` nearest neighbours per record in the matcher's embedding space."""
    pairs = candidate_pairs(table, passes)
    if knn > 0 and len(table) > 1:
        embedding = torch.nn.functional.normalize(encoded.flatten(1).float(), dim=1).cpu().numpy()
        pairs = union_pairs(pairs, knn_pairs(embedding, min(knn, len(table) - 1), table.side))
    return pairs


def _input_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return [p.resolve() for p in path.iterdir() if p.is_file()]
    return [path.resolve()] if path.exists() else []


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    resolved = [p.expanduser().resolve() for p in outputs]
    if len(set(resolved)) < len(resolved):
        raise click.ClickException("--output and --pairs name the same file")
    for path in resolved:
        if path in inputs:
            raise click.ClickException(f"{path} is an input file; write the output elsewhere")
        if path.exists() and not overwrite:
            raise click.ClickException(f"{path} exists; pass --overwrite to replace it")
        if not path.parent.is_dir():
            raise click.ClickException(f"{path.parent}: no such folder for the output")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path = path.expanduser()
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
            frame.to_csv(stream, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
