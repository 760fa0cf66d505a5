"""The parts a re-ID stage trains with: P x K batches, the search split, the losses, the models."""

from __future__ import annotations

import pytest
import torch

from kd_reid.data import IdentityBatchSampler, batch_sampler_for, search_split
from kd_reid.heads import ReIDOutput
from kd_reid.losses import batch_hard_triplet, reid_kl, reid_loss
from kd_reid.models import build_model, genotype_of
from kdcore.losses import soft_target_kl

#: 6 identities with 1, 2, 3, 4, 5 and 6 images.
LABELS = [label for label in range(6) for _ in range(label + 1)]


def test_identity_batches_hold_p_identities_times_k_images():
    sampler = IdentityBatchSampler(LABELS, range(len(LABELS)), 8, 2, torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(LABELS) // 8
    for batch in batches:
        labels = [LABELS[i] for i in batch]
        assert len(batch) == 8 and len(set(labels)) == 4  # P = 8 // 2 distinct identities
        assert all(labels.count(label) == 2 for label in set(labels))
        for label in set(labels) - {0}:  # without replacement where an identity has two images or more
            assert len({i for i in batch if LABELS[i] == label}) == 2


def test_identity_batches_follow_the_generator_only():
    def draw(seed: int) -> list[list[int]]:
        return list(
            IdentityBatchSampler(LABELS, range(len(LABELS)), 8, 2, torch.Generator().manual_seed(seed))
        )

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    ("batch_size", "instances", "message"),
    [
        (8, 1, "options.instances must be at least 2"),
        (10, 4, "must be a multiple of options.instances"),
        (28, 2, "needs 14 identities but the training set has 6"),
    ],
)
def test_impossible_batches_are_refused_naming_the_keys(batch_size, instances, message):
    with pytest.raises(ValueError, match=message):
        IdentityBatchSampler(LABELS, range(len(LABELS)), batch_size, instances, torch.Generator())


def test_the_search_split_alternates_each_identitys_images():
    weights, architecture = search_split(LABELS)
    assert sorted(weights + architecture) == list(range(len(LABELS)))
    assert {LABELS[i] for i in architecture} == {1, 2, 3, 4, 5}  # every identity with two images or more
    assert [LABELS[i] for i in architecture].count(5) == 3


def test_a_search_stage_trains_its_weights_on_its_half_only():
    make = batch_sampler_for(LABELS)
    config = {"data": {"batch_size": 4}, "options": {"search": True, "instances": 2}}
    seen = {i for batch in make(torch.Generator().manual_seed(0), config, True) for i in batch}
    for _ in range(20):
        seen |= {i for batch in make(torch.Generator().manual_seed(_), config, True) for i in batch}
    assert seen <= set(search_split(LABELS)[0])


def test_batch_hard_triplet_takes_the_hardest_positive_and_negative():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 2.5]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive 1.0, hardest negative 2.5 -> relu(1 - 2.5 + 0.3) = 0
    # anchor 3: hardest positive 0.5, hardest negative |(0,2.5)-(1,0)| = sqrt(7.25) -> 0
    assert float(batch_hard_triplet(features, labels)) == pytest.approx(0.0)
    close = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    # anchor 0: 2.0 - 1.0 + 0.3 = 1.3; anchor 1: 2.0 - sqrt(5) + 0.3; anchor 2: 1.0 - 1.0 + 0.3;
    # anchor 3: 1.0 - 2.0 + 0.3 < 0
    expected = (1.3 + max(0.0, 2.3 - 5**0.5) + 0.3 + 0.0) / 4
    assert float(batch_hard_triplet(close, labels)) == pytest.approx(expected, rel=1e-5)


def test_the_triplet_loss_is_zero_without_positives():
    assert float(batch_hard_triplet(torch.randn(3, 4), torch.tensor([0, 1, 2]))) == 0.0


def test_the_supervised_loss_is_smoothed_ce_plus_triplet_and_kd_is_kdcores_kl():
    torch.manual_seed(0)
    logits, features = torch.randn(4, 5), torch.randn(4, 8)
    labels = torch.tensor([0, 0, 1, 1])
    out = ReIDOutput(logits, features, features)
    ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert float(reid_loss(out, labels)) == pytest.approx(float(ce + batch_hard_triplet(features, labels)))
    teacher = ReIDOutput(torch.randn(4, 5), features, features)
    assert float(reid_kl(out, teacher, 3.0)) == pytest.approx(
        float(soft_target_kl(logits, teacher.logits, 3.0))
    )


CONFIG = {
    "options": {
        "channels": 4,
        "search_channels": 4,
        "layers": 3,
        "search_layers": 3,
        "steps": 2,
        "embedding": 16,
    }
}


@pytest.mark.parametrize("arch", ["resnet18", "kdas_search"])
def test_models_return_logits_features_and_embedding(arch):
    model = build_model(arch, {"num_classes": 7}, CONFIG).eval()
    out = model(torch.randn(2, 3, 32, 16))
    assert isinstance(out, ReIDOutput) and out.logits.shape == (2, 7)
    assert out.features.shape == out.embedding.shape


def test_the_resnet_teacher_keeps_stride_one_in_its_last_stage():
    model = build_model("resnet18", {"num_classes": 7}, CONFIG).eval()
    assert model.trunk(torch.randn(1, 3, 64, 32)).shape[2:] == (4, 2)  # 1/16, not 1/32


def test_the_genotype_is_found_by_variant_name_or_file(tmp_path):
    genotype = build_model("kdas_search", {"num_classes": 3}, CONFIG).derive()
    info = {"num_classes": 3, "genotypes": {"search": genotype.to_dict()}}
    assert genotype_of(info, {"genotype": "search"}) == genotype
    path = genotype.save(tmp_path / "g.json")
    assert genotype_of({"num_classes": 3}, {"genotype": str(path)}) == genotype
    with pytest.raises(ValueError, match=r"needs options\.genotype"):
        genotype_of(info, {"genotype": ""})
    with pytest.raises(ValueError, match=r"published: search"):
        genotype_of(info, {"genotype": "other"})


def test_the_search_runs_narrow_and_the_derived_network_at_its_own_width():
    options = {**CONFIG["options"], "search_channels": 4, "channels": 8}
    search = build_model("kdas_search", {"num_classes": 3}, {"options": options})
    genotype = search.derive()
    info = {"num_classes": 3, "genotypes": {"search": genotype.to_dict()}}
    derived = build_model("kdas", info, {"options": {**options, "genotype": "search"}})
    narrow = build_model("kdas", info, {"options": {**options, "genotype": "search", "channels": 4}})
    assert search.stem[3].out_channels == 3 * 4  # the stem ends at 3 x the cells' channels
    assert derived.stem[3].out_channels == 3 * 8
    assert sum(p.numel() for p in derived.parameters()) > 2 * sum(p.numel() for p in narrow.parameters())
