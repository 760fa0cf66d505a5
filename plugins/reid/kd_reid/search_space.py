"""The KDAS-ReID search space: DARTS cells over the Auto-ReID operations, and the networks built from them.

A *cell* takes the outputs of the two cells before it (nodes 0 and 1) and computes ``steps`` nodes; node
``j`` is the sum of one operation on each earlier node, and the cell's output is the concatenation of its
computed nodes (Liu, Simonyan and Yang, DARTS, ICLR 2019). A *reduction* cell applies its operations with
stride 2 to the two inputs and doubles the channels.

The operations are Auto-ReID's (Quan et al., ICCV 2019): 3x3 max and average pooling, skip (identity;
a factorised 1x1 reduction when strided), depth-wise separable 3x3 and 5x5 convolutions, dilated 3x3 and
5x5 convolutions, zero, and the *part-aware module*: the feature map is cut into 4 horizontal stripes
(head, torso, legs, feet of an upright pedestrian), each stripe is pooled to a vector, the part vectors
attend to one another (scaled dot-product self-attention), and each stripe of the map gets its attended
vector back, added to the input. It lets a cell relate body parts, which a re-ID model needs and an
ImageNet cell does not have.

:class:`SearchNetwork` mixes every operation on every edge with softmax weights of the architecture
parameters ``alpha_normal`` and ``alpha_reduce`` (shared by all cells of a kind); :meth:`derive` keeps, for
each node, the two strongest incoming edges and their strongest operation other than zero, as DARTS
does. :class:`DerivedNetwork` stacks cells of a :class:`Genotype` and is trained from scratch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_reid.heads import ReIDHead, ReIDOutput

#: The candidate operations of every edge, in the order of the architecture parameters' columns.
PRIMITIVES: tuple[str, ...] = (
    "zero",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "part_aware",
)
GENOTYPE_VERSION = 1


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, batch norm: the pre-activation unit of DARTS cells."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        )


class DilConv(nn.Sequential):
    """A dilated depth-wise convolution followed by a point-wise one."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class SepConv(nn.Sequential):
    """Depth-wise separable convolution, applied twice (the first may be strided), as in DARTS."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(DilConv(c, kernel, stride, padding, 1), DilConv(c, kernel, 1, padding, 1))


class Zero(nn.Module):
    """The absent edge: zeros of the output's shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two strided 1x1 convolutions, one shifted by a pixel."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class PartAware(nn.Module):
    """Auto-ReID's part-aware module: self-attention among ``parts`` horizontal stripes of the map.

    Each stripe is average-pooled to a vector; queries, keys and values are linear maps of those vectors;
    each stripe receives its attended vector (projected back to the channels, batch-normalised), broadcast
    over the stripe and added to the (strided) input. Heights that do not divide evenly give the last
    stripes one row less (adaptive pooling and nearest interpolation agree on the split).

    The batch norm's scale starts at zero, so the module starts as the identity and learns how much part
    context to add, as residual branches are started in deep networks. With a scale of one from the
    start, the cells seed 1 searched (two part-aware edges) trained to 0.32 mAP; with the scale at zero
    they reach 0.52, and 0.53 with those two edges made max pooling (BENCHMARKS.md, reid).
    """

    def __init__(self, c: int, stride: int, parts: int = 4) -> None:
        super().__init__()
        self.parts, self.stride = parts, stride
        inner = max(8, c // 2)
        self.query = nn.Linear(c, inner, bias=False)
        self.key = nn.Linear(c, inner, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        parts = min(self.parts, x.shape[2])
        vectors = F.adaptive_avg_pool2d(x, (parts, 1)).flatten(2).transpose(1, 2)  # [B, parts, C]
        q, k = self.query(vectors), self.key(vectors)
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (attention @ self.value(vectors)).transpose(1, 2).unsqueeze(-1)  # [B, C, parts, 1]
        stripes = F.interpolate(attended, size=x.shape[2:], mode="nearest")
        return x + self.bn(stripes)


OPERATIONS: dict[str, Callable[[int, int], nn.Module]] = {
    "zero": lambda c, stride: Zero(stride),
    "skip_connect": lambda c, stride: nn.Identity() if stride == 1 else FactorizedReduce(c, c),
    "max_pool_3x3": lambda c, stride: nn.MaxPool2d(3, stride, padding=1),
    "avg_pool_3x3": lambda c, stride: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "sep_conv_3x3": lambda c, stride: SepConv(c, 3, stride, 1),
    "sep_conv_5x5": lambda c, stride: SepConv(c, 5, stride, 2),
    "dil_conv_3x3": lambda c, stride: DilConv(c, 3, stride, 2, 2),
    "dil_conv_5x5": lambda c, stride: DilConv(c, 5, stride, 4, 2),
    "part_aware": lambda c, stride: PartAware(c, stride),
}


def make_operation(name: str, channels: int, stride: int) -> nn.Module:
    """The operation ``name`` of :data:`PRIMITIVES` on ``channels`` channels with ``stride`` (1 or 2)."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; choose one of {', '.join(PRIMITIVES)}")
    return OPERATIONS[name](channels, stride)


class MixedOp(nn.Module):
    """Every candidate operation of one edge, summed with weights (a softmax over ``PRIMITIVES``)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_operation(name, channels, stride) for name in PRIMITIVES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


@dataclass(frozen=True)
class Genotype:
    """A derived cell pair: for each computed node, two ``(operation, input node)`` edges.

    ``normal`` and ``reduce`` list ``2 * steps`` edges, node by node; input node 0 is the output of the
    cell two back, 1 the previous cell's, ``2 + j`` the cell's own node ``j``. The cell's output is the
    concatenation of all its computed nodes.
    """

    normal: tuple[tuple[str, int], ...]
    reduce: tuple[tuple[str, int], ...]

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        return {
            "version": GENOTYPE_VERSION,
            "normal": [[op, node] for op, node in self.normal],
            "reduce": [[op, node] for op, node in self.reduce],
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "genotype") -> Genotype:
        """Read and check :meth:`to_dict`'s form; errors name ``source`` and what is wrong."""
        if not isinstance(data, dict) or "normal" not in data or "reduce" not in data:
            raise ValueError(f"{source}: expected a table with 'normal' and 'reduce' edge lists")
        cells = {}
        for kind in ("normal", "reduce"):
            edges = data[kind]
            if not isinstance(edges, list) or not edges or len(edges) % 2:
                raise ValueError(f"{source}: '{kind}' must list two [operation, input] edges per node")
            parsed = []
            for index, edge in enumerate(edges):
                node = 2 + index // 2
                if not (isinstance(edge, list | tuple) and len(edge) == 2):
                    raise ValueError(
                        f"{source}: {kind}[{index}] must be [operation, input node], got {edge!r}"
                    )
                op, source_node = edge
                if op not in PRIMITIVES or op == "zero":
                    raise ValueError(
                        f"{source}: {kind}[{index}] operation {op!r} is not one of "
                        f"{', '.join(p for p in PRIMITIVES if p != 'zero')}"
                    )
                if not isinstance(source_node, int) or not 0 <= source_node < node:
                    raise ValueError(
                        f"{source}: {kind}[{index}] input {source_node!r} must be a node before node {node} "
                        f"(0 .. {node - 1})"
                    )
                parsed.append((op, source_node))
            cells[kind] = tuple(parsed)
        if len(cells["normal"]) != len(cells["reduce"]):
            raise ValueError(f"{source}: 'normal' and 'reduce' must have the same number of nodes")
        return cls(normal=cells["normal"], reduce=cells["reduce"])

    def save(self, path: str | Path) -> Path:
        """Write the genotype as readable JSON (atomically)."""
        from kdcore.checkpoint import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """Read a genotype file written by :meth:`save` (or by hand)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"genotype file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"genotype file {path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=str(path))


def _preprocess(
    c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool
) -> tuple[nn.Module, nn.Module]:
    first = (
        FactorizedReduce(c_prev_prev, channels)
        if reduction_prev
        else ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
    )
    return first, ReLUConvBN(c_prev, channels, 1, 1, 0)


class SearchCell(nn.Module):
    """A cell whose every edge is a :class:`MixedOp`; ``forward`` takes the softmaxed weights per edge."""

    def __init__(
        self, steps: int, c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool
    ) -> None:
        super().__init__()
        self.steps, self.reduction = steps, reduction
        self.pre0, self.pre1 = _preprocess(c_prev_prev, c_prev, channels, reduction_prev)
        self.edges = nn.ModuleList(
            MixedOp(channels, 2 if reduction and source < 2 else 1)
            for node in range(steps)
            for source in range(2 + node)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.steps):
            states.append(sum(self.edges[offset + i](h, weights[offset + i]) for i, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


class DerivedCell(nn.Module):
    """A cell of a :class:`Genotype`: two chosen operations per node."""

    def __init__(
        self,
        edges: Sequence[tuple[str, int]],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.steps = len(edges) // 2
        self.sources = [source for _, source in edges]
        self.pre0, self.pre1 = _preprocess(c_prev_prev, c_prev, channels, reduction_prev)
        self.ops = nn.ModuleList(
            make_operation(op, channels, 2 if reduction and source < 2 else 1) for op, source in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(self.steps):
            a, b = 2 * node, 2 * node + 1
            states.append(self.ops[a](states[self.sources[a]]) + self.ops[b](states[self.sources[b]]))
        return torch.cat(states[2:], dim=1)


def reduction_layers(layers: int) -> set[int]:
    """The cells that reduce: at one and two thirds of the depth, as in DARTS."""
    return {layers // 3, 2 * layers // 3} if layers >= 3 else set()


class _CellNetwork(nn.Module):
    """Stem, a stack of cells and the re-ID head; subclasses build the cells."""

    def __init__(self, channels: int, layers: int, steps: int, num_classes: int, embedding: int) -> None:
        super().__init__()
        stem = 3 * channels
        # Two stride-2 convolutions, as DARTS's ImageNet stem and a ResNet's: the cells see a quarter
        # of the input's resolution (16 x 8 for the CPU default's 64 x 32 crops, 64 x 32 for 256 x 128).
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem // 2, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
        )
        self.cells = nn.ModuleList()
        c_prev_prev, c_prev, c = stem, stem, channels
        reduction_prev = False
        reductions = reduction_layers(layers)
        for index in range(layers):
            reduction = index in reductions
            if reduction:
                c *= 2
            self.cells.append(self._cell(index, c_prev_prev, c_prev, c, reduction, reduction_prev))
            c_prev_prev, c_prev, reduction_prev = c_prev, steps * c, reduction
        self.head = ReIDHead(c_prev, num_classes, embedding)

    def _cell(
        self, index: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool
    ) -> nn.Module:
        raise NotImplementedError


class SearchNetwork(_CellNetwork):
    """The supernet of the search: mixed operations everywhere, weighted by the architecture parameters.

    ``alpha_normal`` and ``alpha_reduce`` (``[edges, len(PRIMITIVES)]``) are parameters that start with
    ``requires_grad=False``, so the engine's weight optimiser never holds them; the search hooks switch
    them on for the architecture step only (:mod:`kd_reid.search`). They are saved with the weights, so
    a search checkpoint can be derived again later (``kd reid derive``).
    """

    def __init__(
        self, num_classes: int, channels: int = 16, layers: int = 5, steps: int = 4, embedding: int = 256
    ) -> None:
        self.steps = steps
        super().__init__(channels, layers, steps, num_classes, embedding)
        edges = sum(2 + node for node in range(steps))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)), requires_grad=False)
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)), requires_grad=False)

    def _cell(
        self, index: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool
    ) -> nn.Module:
        return SearchCell(self.steps, c_pp, c_p, c, reduction, reduction_prev)

    def architecture_parameters(self) -> list[nn.Parameter]:
        """The two architecture parameter matrices."""
        return [self.alpha_normal, self.alpha_reduce]

    def forward(self, x: torch.Tensor) -> ReIDOutput:
        normal, reduce = F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.head(s1)

    def derive(self) -> Genotype:
        """The discrete cells: per node the two strongest edges, each with its best non-zero operation."""
        return Genotype(
            normal=_derive(self.alpha_normal, self.steps), reduce=_derive(self.alpha_reduce, self.steps)
        )


def _derive(alpha: torch.Tensor, steps: int) -> tuple[tuple[str, int], ...]:
    weights = F.softmax(alpha.detach().float().cpu(), dim=-1)
    zero = PRIMITIVES.index("zero")
    chosen: list[tuple[str, int]] = []
    start = 0
    for node in range(steps):
        inputs = 2 + node
        block = weights[start : start + inputs].clone()
        block[:, zero] = -1.0
        strength, best_op = block.max(dim=1)
        for source in sorted(torch.argsort(strength, descending=True, stable=True)[:2].tolist()):
            chosen.append((PRIMITIVES[int(best_op[source])], source))
        start += inputs
    return tuple(chosen)


class DerivedNetwork(_CellNetwork):
    """The network of a :class:`Genotype`, trained from scratch after the search."""

    def __init__(
        self, genotype: Genotype, num_classes: int, channels: int = 16, layers: int = 5, embedding: int = 256
    ) -> None:
        self.genotype = genotype
        super().__init__(channels, layers, genotype.steps, num_classes, embedding)

    def _cell(
        self, index: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool
    ) -> nn.Module:
        edges = self.genotype.reduce if reduction else self.genotype.normal
        return DerivedCell(edges, c_pp, c_p, c, reduction, reduction_prev)

    def forward(self, x: torch.Tensor) -> ReIDOutput:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)
