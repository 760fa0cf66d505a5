"""The Siamese matcher: one record encoder shared by both sides of a pair, and a comparison head.

Design (after SNNDedupe of Loster et al., which combines character embeddings with a Siamese network;
the layer sizes here are ours):

* **Record encoder.** Every attribute value is a row of character codes (:mod:`kd_dedup.encoding`).
  A character embedding shared by all attributes feeds a two-layer character CNN (kernel 3, ReLU) whose
  outputs are max-pooled over the characters of the value (padding masked out), so a value of any
  length becomes one vector; a per-attribute linear map then places each attribute in its own space
  (one batched ``einsum``, not a Python loop over attributes). An empty value encodes as zeros.
* **Comparison head.** For each attribute the two encodings ``u, v`` give ``|u - v|``, ``u * v``, their
  cosine and two "is empty" flags; a per-attribute comparator (one batched linear map and ReLU per
  attribute: names, dates and postcodes are compared differently) reduces them to a few numbers, and an
  MLP over all attributes' numbers gives two logits (non-match, match). The head is symmetric in the two
  records, like the question it answers.

Because the encoder sees one record at a time, a whole table is encoded once and only the head runs per
candidate pair (:func:`score_pairs`): scoring millions of pairs costs millions of small MLP passes, not
millions of CNN passes. The two logits make a match probability with a softmax, and the teacher's soft
match scores are plain two-class soft targets for kdcore's KD losses.

Architectures (``teacher.arch`` / ``student.arch``), for the 10 FEBRL attributes:

=============  ========  =========  ====  =======  ======  ==========  ==================================
name           char dim  CNN width  attr  compare  hidden  parameters  role
=============  ========  =========  ====  =======  ======  ==========  ==================================
siamese_large  24        64         32    16       64      60,530      teacher
siamese_small  12        24         12    6        32      10,034      student: small and fast for many pairs
=============  ========  =========  ====  =======  ======  ==========  ==================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kd_dedup.architectures import ARCHITECTURES, MatcherSpec
from kd_dedup.encoding import PAD, VOCABULARY_SIZE


class RecordEncoder(nn.Module):
    """Character codes ``(N, A, L)`` to attribute encodings ``(N, A, attribute_dim)``.

    Args:
        attributes: the number of attribute columns ``A``.
        spec: the layer sizes.
    """

    def __init__(self, attributes: int, spec: MatcherSpec) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY_SIZE, spec.char_dim, padding_idx=PAD)
        self.conv1 = nn.Conv1d(spec.char_dim, spec.channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(spec.channels, spec.channels, kernel_size=3, padding=1)
        self.project = nn.Parameter(torch.empty(attributes, spec.channels, spec.attribute_dim))
        self.bias = nn.Parameter(torch.zeros(attributes, spec.attribute_dim))
        nn.init.xavier_uniform_(self.project.view(-1, spec.attribute_dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        n, attributes, length = codes.shape
        flat = codes.reshape(n * attributes, length).long()
        present = flat != PAD  # (N*A, L)
        x = self.embedding(flat).transpose(1, 2)  # (N*A, char_dim, L)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = x.masked_fill(~present.unsqueeze(1), float("-inf")).amax(dim=2)  # (N*A, channels)
        x = torch.where(present.any(dim=1, keepdim=True), x, torch.zeros_like(x))  # empty value: zeros
        x = x.view(n, attributes, -1)
        encoded = torch.einsum("nac,acd->nad", x, self.project) + self.bias
        empty = ~present.view(n, attributes, length).any(dim=2, keepdim=True)
        return encoded.masked_fill(empty, 0.0)


class SiameseMatcher(nn.Module):
    """Two records in, two logits (non-match, match) out; see the module docstring.

    ``forward`` takes a batch of pairs as codes ``(N, 2, A, L)``. :meth:`encode` and :meth:`compare` are
    its two halves, for scoring many pairs over one encoded table.

    Args:
        attributes: the number of attribute columns.
        spec: the layer sizes (:data:`ARCHITECTURES`).
    """

    def __init__(self, attributes: int, spec: MatcherSpec) -> None:
        super().__init__()
        self.encoder = RecordEncoder(attributes, spec)
        features = 2 * spec.attribute_dim + 3
        self.comparator = nn.Parameter(torch.empty(attributes, features, spec.compare_dim))
        self.comparator_bias = nn.Parameter(torch.zeros(attributes, spec.compare_dim))
        nn.init.kaiming_uniform_(self.comparator.view(-1, spec.compare_dim), nonlinearity="relu")
        self.head = nn.Sequential(
            nn.Linear(attributes * spec.compare_dim, spec.hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(spec.hidden, 2),
        )

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """Attribute encodings ``(N, A, D)`` of records ``(N, A, L)``."""
        return self.encoder(codes)

    def compare(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)`` for pairs of encoded records ``(N, A, D)`` each."""
        left_empty = (left == 0).all(dim=2, keepdim=True).float()
        right_empty = (right == 0).all(dim=2, keepdim=True).float()
        cosine = F.cosine_similarity(left, right, dim=2, eps=1e-6).unsqueeze(2)
        parts = [
            (left - right).abs(),
            left * right,
            cosine,
            left_empty + right_empty,
            left_empty * right_empty,
        ]
        features = torch.cat(parts, dim=2)  # (N, A, 2D + 3)
        compared = F.relu(torch.einsum("naf,afc->nac", features, self.comparator) + self.comparator_bias)
        return self.head(compared.flatten(1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        n = pairs.shape[0]
        encoded = self.encode(pairs.reshape(n * 2, *pairs.shape[2:]))
        encoded = encoded.view(n, 2, *encoded.shape[1:])
        return self.compare(encoded[:, 0], encoded[:, 1])


def build_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """The matcher ``arch`` for ``info['attributes']`` attribute columns."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return SiameseMatcher(int(info["attributes"]), ARCHITECTURES[arch])


def matcher_from_state(state: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """The matcher a checkpoint (:func:`kdcore.checkpoint.load_checkpoint`'s dict) holds, with its
    weights, in evaluation mode."""
    model = build_model(state["arch"], state["data_info"], config)
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def encode_table(
    model: SiameseMatcher, codes: torch.Tensor, device: torch.device, batch: int = 4096
) -> torch.Tensor:
    """Every record of a table encoded once: ``(n, A, D)`` on ``device``."""
    model.eval()
    parts = [model.encode(codes[i : i + batch].to(device)) for i in range(0, len(codes), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, device=device)


@torch.no_grad()
def score_pairs(
    model: SiameseMatcher, encoded: torch.Tensor, pairs: torch.Tensor, batch: int = 65536
) -> torch.Tensor:
    """Match probabilities (CPU float32) of positional ``pairs`` ``(m, 2)`` over an encoded table."""
    model.eval()
    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch].to(encoded.device)
        logits = model.compare(encoded[chunk[:, 0]], encoded[chunk[:, 1]])
        out.append(logits.float().softmax(dim=1)[:, 1].cpu())
    return torch.cat(out) if out else torch.zeros(0)
