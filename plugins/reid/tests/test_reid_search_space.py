"""The search space: every operation's shapes, the mixed operation, derivation and genotype files."""

from __future__ import annotations

import json

import pytest
import torch

from kd_reid.search_space import (
    PRIMITIVES,
    DerivedNetwork,
    Genotype,
    MixedOp,
    PartAware,
    SearchNetwork,
    make_operation,
)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_operation_keeps_channels_and_divides_the_resolution_by_its_stride(name, stride):
    op = make_operation(name, 8, stride)
    out = op(torch.randn(2, 8, 16, 8))
    assert out.shape == (2, 8, 16 // stride, 8 // stride)


def test_an_unknown_operation_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown operation 'conv_7x7'.*sep_conv_3x3"):
        make_operation("conv_7x7", 8, 1)


def test_the_mixed_operation_is_the_weighted_sum_of_its_operations():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1).eval()
    x = torch.randn(2, 4, 8, 4)
    one_hot = torch.zeros(len(PRIMITIVES))
    one_hot[PRIMITIVES.index("avg_pool_3x3")] = 1.0
    torch.testing.assert_close(mixed(x, one_hot), mixed.ops[PRIMITIVES.index("avg_pool_3x3")](x))
    weights = torch.softmax(torch.randn(len(PRIMITIVES)), dim=0)
    expected = sum(w * op(x) for w, op in zip(weights, mixed.ops, strict=True))
    torch.testing.assert_close(mixed(x, weights), expected)


def test_the_part_aware_module_starts_as_the_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 4)
    torch.testing.assert_close(PartAware(8, 1).eval()(x), x)
    torch.testing.assert_close(PartAware(8, 2).eval()(x), torch.nn.functional.avg_pool2d(x, 2))


def test_the_part_aware_module_mixes_information_between_horizontal_stripes():
    torch.manual_seed(0)
    module = PartAware(8, 1).eval()
    torch.nn.init.ones_(module.bn.weight)  # as after training: the part context is switched on
    x = torch.zeros(1, 8, 8, 4)
    changed = x.clone()
    changed[:, :, :2] = 1.0  # only the top stripe (head) changes
    delta = module(changed) - module(x)
    # the attended vectors of every stripe change: the legs "see" the head
    assert delta[:, :, 6:].abs().sum() > 0
    # within a stripe the added vector is constant over the rows and columns
    bottom = (module(changed) - changed)[:, :, 6:]
    torch.testing.assert_close(bottom, bottom[:, :, :1, :1].expand_as(bottom))


def supernet() -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(num_classes=5, channels=4, layers=3, steps=2, embedding=16)


def test_the_supernet_outputs_logits_features_and_embedding():
    out = supernet()(torch.randn(4, 3, 32, 16))
    assert out.logits.shape == (4, 5) and out.features.shape == (4, 16) and out.embedding.shape == (4, 16)


def test_architecture_parameters_are_kept_out_of_the_weight_optimiser():
    model = supernet()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(a) not in trainable for a in model.architecture_parameters())
    assert model.alpha_normal.shape == (2 + 3, len(PRIMITIVES))  # edges of 2 nodes: 2 + 3
    assert {"alpha_normal", "alpha_reduce"} <= set(model.state_dict())  # saved with the weights


def test_derive_keeps_the_two_strongest_edges_and_their_best_non_zero_operation():
    model = supernet()
    with torch.no_grad():
        model.alpha_normal.zero_()
        model.alpha_reduce.zero_()
        zero, sep, part = (PRIMITIVES.index(n) for n in ("zero", "sep_conv_3x3", "part_aware"))
        # node 0 (edges 0, 1): edge 1 prefers sep_conv; edge 0 is strongest on "zero", which never counts
        model.alpha_normal[0, zero] = 9.0
        model.alpha_normal[1, sep] = 3.0
        # node 1 (edges 2, 3, 4 from inputs 0, 1, node 0): inputs 0 and node 0 win, with part_aware
        model.alpha_normal[2, part] = 2.0
        model.alpha_normal[4, sep] = 4.0
    genotype = model.derive()
    assert genotype.normal[2:] == (("part_aware", 0), ("sep_conv_3x3", 2))
    assert ("sep_conv_3x3", 1) in genotype.normal[:2]
    assert all(op != "zero" for op, _ in genotype.normal + genotype.reduce)


def test_a_derived_network_trains_from_its_genotype_and_is_smaller():
    model = supernet()
    genotype = model.derive()
    derived = DerivedNetwork(genotype, num_classes=5, channels=4, layers=3, embedding=16)
    out = derived(torch.randn(4, 3, 32, 16))
    assert out.logits.shape == (4, 5)
    out.logits.sum().backward()
    assert sum(p.numel() for p in derived.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_genotype_file_round_trips_and_reads_as_plain_json(tmp_path):
    genotype = supernet().derive()
    path = genotype.save(tmp_path / "genotype.json")
    data = json.loads(path.read_text())
    assert data["normal"] == [list(edge) for edge in genotype.normal]
    assert Genotype.load(path) == genotype


def with_normal(edges: str) -> str:
    """A genotype file's text with these normal-cell edges and a valid reduction cell."""
    return f'{{"normal": {edges}, "reduce": [["skip_connect", 0], ["skip_connect", 1]]}}'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"normal": []}', "expected a table with 'normal' and 'reduce'"),
        ('{"normal": [["sep_conv_3x3", 0]], "reduce": [["sep_conv_3x3", 0]]}', "two \\[operation, input\\]"),
        (with_normal('[["conv9", 0], ["skip_connect", 1]]'), r"normal\[0\] operation 'conv9'"),
        (with_normal('[["zero", 0], ["skip_connect", 1]]'), r"normal\[0\] operation 'zero'"),
        (
            with_normal('[["skip_connect", 2], ["skip_connect", 1]]'),
            r"normal\[0\] input 2 must be a node before node 2",
        ),
    ],
)
def test_a_broken_genotype_file_is_refused_naming_the_file_and_the_edge(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        Genotype.load(path)
    assert str(path) in str(error.value)
