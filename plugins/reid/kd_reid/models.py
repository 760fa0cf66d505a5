"""Teachers (torchvision ResNets) and students (searched cells) for re-ID, by architecture name.

================  ==========================================================================
name              network
================  ==========================================================================
resnet50          torchvision ResNet-50, last stride 1, BNNeck head (the paper's teacher)
resnet18          torchvision ResNet-18, last stride 1, BNNeck head (the CPU teacher)
kdas_search       the search supernet (:class:`kd_reid.search_space.SearchNetwork`)
kdas              the derived network of ``options.genotype`` (:class:`~kd_reid.search_space.DerivedNetwork`)
================  ==========================================================================

No pretrained weights are downloaded (the machine may be offline): the teachers start from scratch, or
from ``teacher.checkpoint``. The cell networks take ``options.steps`` (nodes per cell) and
``options.embedding``; the supernet has ``options.search_layers`` cells of ``options.search_channels``
and the derived network ``options.layers`` cells of ``options.channels`` (channels of the first cells):
a narrow, shallow proxy for the search and a wider, deeper network for training, as DARTS searches
with 8 cells of 16 channels and trains 20 of 36.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kd_reid import ARCHITECTURES
from kd_reid.heads import ReIDHead, ReIDOutput
from kd_reid.search_space import DerivedNetwork, Genotype, SearchNetwork


class ResNetReID(nn.Module):
    """A torchvision ResNet trunk (no pooling, no classifier) with the re-ID head.

    The last stage keeps stride 1 (Luo et al. 2019): a 2x larger final map for the same weights, which
    matters for small pedestrian crops.
    """

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet18, resnet50

        trunk = (resnet18 if depth == 18 else resnet50)(weights=None)
        block = trunk.layer4[0]  # the strided convolution: conv1 of a basic block, conv2 of a bottleneck
        (block.conv1 if depth == 18 else block.conv2).stride = (1, 1)
        block.downsample[0].stride = (1, 1)
        self.trunk = nn.Sequential(*list(trunk.children())[:-2])
        self.head = ReIDHead(trunk.fc.in_features, num_classes)

    def forward(self, x) -> ReIDOutput:
        return self.head(self.trunk(x))


def genotype_of(info: Mapping[str, Any], options: Mapping[str, Any]) -> Genotype:
    """The genotype ``options.genotype`` names: a JSON file, or the name of a search variant of this run
    whose derived genotype the run published (``info["genotypes"][name]``)."""
    reference = str(options.get("genotype") or "")
    if not reference:
        raise ValueError(
            "architecture 'kdas' needs options.genotype: a genotype file or a search variant's name"
        )
    published = dict(info.get("genotypes") or {})
    if reference in published:
        return Genotype.from_dict(
            published[reference], source=f"the genotype of search variant {reference!r}"
        )
    if reference.endswith(".json"):
        return Genotype.load(reference)
    raise ValueError(
        f"options.genotype = {reference!r}: no search variant of this run published that name "
        f"(published: {', '.join(published) or 'none yet'}; a search variant must train before the "
        "variants that use it) and it is not a .json file"
    )


def build_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """Build ``arch`` (one of :data:`ARCHITECTURES`) for ``info["num_classes"]`` training identities."""
    num_classes = int(info["num_classes"])
    options = config["options"]
    if arch in ("resnet18", "resnet50"):
        return ResNetReID(int(arch.removeprefix("resnet")), num_classes)
    embedding = int(options["embedding"])
    if arch == "kdas_search":
        channels, layers = int(options["search_channels"]), int(options["search_layers"])
        return SearchNetwork(num_classes, channels, layers, int(options["steps"]), embedding)
    if arch == "kdas":
        channels, layers = int(options["channels"]), int(options["layers"])
        return DerivedNetwork(genotype_of(info, options), num_classes, channels, layers, embedding)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
