"""The re-ID head every network ends with, and what the networks return.

Global average pooling gives the feature the triplet loss pulls and pushes; a batch-norm "neck" (BNNeck,
Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification", CVPRW 2019) then
feeds the identity classifier and gives the feature used for retrieval. Splitting the two lets the
triplet loss work in a free Euclidean space while the classifier sees normalised features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ReIDOutput(NamedTuple):
    """What every re-ID network returns.

    Attributes:
        logits: identity logits ``[B, num_train_ids]`` (cross-entropy and the KD soft targets).
        features: pooled features before the neck ``[B, D]`` (the triplet loss).
        embedding: the neck's output ``[B, D]`` (retrieval: L2-normalised and compared at test time).
    """

    logits: torch.Tensor
    features: torch.Tensor
    embedding: torch.Tensor


class ReIDHead(nn.Module):
    """Pool, optional linear reduction to ``embedding`` dimensions, BNNeck, bias-free classifier."""

    def __init__(self, in_channels: int, num_classes: int, embedding: int = 0) -> None:
        super().__init__()
        self.reduce = (
            nn.Sequential(nn.Linear(in_channels, embedding, bias=False), nn.BatchNorm1d(embedding), nn.ReLU())
            if embedding and embedding != in_channels
            else nn.Identity()
        )
        dim = embedding or in_channels
        self.neck = nn.BatchNorm1d(dim)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift, so the classifier's space stays centred
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature_map: torch.Tensor) -> ReIDOutput:
        features = self.reduce(feature_map.mean(dim=(2, 3)))
        embedding = self.neck(features)
        return ReIDOutput(self.classifier(embedding), features, embedding)
