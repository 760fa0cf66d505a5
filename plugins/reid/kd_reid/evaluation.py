"""Scoring a re-ID model: embeddings of query and gallery, distances, the Market-1501 protocol.

Embeddings are the BNNeck outputs (:class:`kd_reid.heads.ReIDOutput`), L2-normalised and compared by
squared Euclidean distance (``options.distance``: ``euclidean`` or ``cosine``); with ``options.rerank``
the distances are re-ranked with k-reciprocal encoding before scoring. Metrics (fractions in [0, 1]):
``rank1``, ``rank5``, ``rank10``, ``mAP`` (the main metric) and ``mINP``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_reid.retrieval import evaluate_ranking, k_reciprocal_rerank, pairwise_distances


@torch.no_grad()
def extract(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Embeddings, identities, cameras and the query flag of every item of an evaluation loader."""
    model.eval()
    embeddings, pids, camids, is_query = [], [], [], []
    for images, pid, camid, query in loader:
        embeddings.append(model(images.to(device)).embedding.float().cpu())
        pids.append(pid)
        camids.append(camid)
        is_query.append(query)
    if not embeddings:
        raise ValueError("the evaluation set is empty: no query or gallery image")
    return {
        "embeddings": torch.cat(embeddings),
        "pids": torch.cat(pids).numpy(),
        "camids": torch.cat(camids).numpy(),
        "is_query": torch.cat(is_query).numpy().astype(bool),
    }


def distances(features: Mapping[str, Any], options: Mapping[str, Any]) -> np.ndarray:
    """Query x gallery distances of :func:`extract`'s output, re-ranked when ``options.rerank``."""
    query, gallery = (
        features["embeddings"][features["is_query"]],
        features["embeddings"][~features["is_query"]],
    )
    metric = str(options["distance"])
    query_gallery = pairwise_distances(query, gallery, metric).numpy()
    if not options["rerank"]:
        return query_gallery
    query_query = pairwise_distances(query, query, metric).numpy()
    gallery_gallery = pairwise_distances(gallery, gallery, metric).numpy()
    return k_reciprocal_rerank(query_gallery, query_query, gallery_gallery)


def evaluate_reid(
    model: nn.Module, loader: DataLoader, device: torch.device, config: Mapping[str, Any]
) -> dict[str, float]:
    """CMC rank-1/5/10, mAP and mINP of ``model`` on the query and gallery of ``loader``."""
    features = extract(model, loader, device)
    flags = features["is_query"]
    result = evaluate_ranking(
        distances(features, config["options"]),
        features["pids"][flags],
        features["pids"][~flags],
        features["camids"][flags],
        features["camids"][~flags],
    )
    return result.as_dict()


@torch.inference_mode()
def latency_ms(model: nn.Module, height: int, width: int, device: torch.device, repeats: int = 10) -> float:
    """Median milliseconds to embed one ``height x width`` image (batch 1, after a warm-up pass)."""
    import time

    model.eval()
    image = torch.randn(1, 3, height, width, device=device)
    model(image)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def draw_stage_ranked_lists(run, summary: dict[str, Any]) -> Path | None:
    """``report/ranked/<stage>.png``: the top matches of ``options.ranked_queries`` queries (spread over
    the query set) for the model the stage just trained; nothing when the option is 0."""
    from kd_reid.drawing import draw_ranked_lists

    count = int(run.config["options"]["ranked_queries"])
    if count <= 0 or not run.dist.is_main:
        return None
    loader = DataLoader(run.data.val, batch_size=int(run.config["data"]["eval_batch_size"]))
    features = extract(run.student, loader, run.device)
    flags = features["is_query"]
    matrix = distances(features, run.config["options"])
    query_at = np.linspace(0, matrix.shape[0] - 1, num=min(count, matrix.shape[0])).round().astype(int)
    top = min(8, matrix.shape[1])
    order = np.argsort(matrix[query_at], axis=1, kind="stable")[:, :top]
    g_pids, q_pids = features["pids"][~flags], features["pids"][flags]
    correct = g_pids[order] == q_pids[query_at, None]
    images = run.data.val.images
    num_query = int(flags.sum())
    label = summary["stage"].replace("/", ".")
    path = run.run_dir / "report" / "ranked" / f"{label}.png"
    title = f"{summary['stage']} ({summary['arch']}): top {top} of the gallery; green = same person"
    draw_ranked_lists(images[query_at], images[num_query + order], order, correct, path, title)
    summary["ranked_lists"] = str(path.relative_to(run.run_dir))
    return path
