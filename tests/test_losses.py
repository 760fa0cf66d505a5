"""Specification tests for kdcore.losses: values are checked against hand computations / closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.losses import (
    BUILTIN_LOSSES,
    FEATURE_LOSSES,
    FeatureHint,
    attention_transfer,
    dense_kl,
    hard_label_ce,
    mse_logits,
    rkd_distance,
    similarity_preserving,
    soft_target_kl,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------------------
# soft_target_kl / dense_kl
# ----------------------------------------------------------------------------------------------------------
def test_soft_target_kl_is_zero_for_identical_logits() -> None:
    logits = torch.randn(4, 7)
    for temperature in (1.0, 4.0):
        assert soft_target_kl(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_target_kl_matches_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    temperature = 2.0
    expected = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist(), strict=True):
        z_s = sum(math.exp(v / temperature) for v in row_s)
        z_t = sum(math.exp(v / temperature) for v in row_t)
        for v_s, v_t in zip(row_s, row_t, strict=True):
            p_t = math.exp(v_t / temperature) / z_t
            p_s = math.exp(v_s / temperature) / z_s
            expected += p_t * (math.log(p_t) - math.log(p_s))
    expected = expected / 2 * temperature**2  # batchmean over N=2 samples, times T^2
    assert soft_target_kl(s, t, temperature).item() == pytest.approx(expected, rel=1e-12)


def test_soft_target_kl_equals_torch_batchmean_for_classification() -> None:
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    temperature = 3.0
    reference = (
        F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        * temperature**2
    )
    torch.testing.assert_close(soft_target_kl(s, t, temperature), reference)


def test_soft_target_kl_is_non_negative() -> None:
    for _ in range(20):
        s, t = 5 * torch.randn(3, 6), 5 * torch.randn(3, 6)
        assert soft_target_kl(s, t, float(torch.rand(()) * 5 + 0.1)).item() >= 0.0


def test_soft_target_kl_gradient_reaches_student_and_learnable_temperature_only() -> None:
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    log_temperature = torch.tensor(math.log(2.0), requires_grad=True)
    loss = soft_target_kl(s, t, log_temperature.exp())
    assert loss.ndim == 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert log_temperature.grad is not None and torch.isfinite(log_temperature.grad)
    assert log_temperature.grad != 0
    assert t.grad is None  # the teacher is a fixed target


def test_soft_target_kl_accepts_one_element_tensor_temperature() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    loss = soft_target_kl(s, t, torch.tensor([3.0]))
    assert loss.shape == torch.Size([])
    torch.testing.assert_close(loss, soft_target_kl(s, t, 3.0))


def test_soft_target_kl_large_temperature_approaches_logit_matching_limit() -> None:
    # Second-order expansion around the uniform distribution: for T -> inf,
    # T^2 * KL(softmax(t/T) || softmax(s/T)) -> 1/(2C) * sum_c (d_c - mean_c d)^2, d = s - t (mean over N).
    s = torch.randn(5, 6, dtype=torch.float64)
    t = torch.randn(5, 6, dtype=torch.float64)
    d = s - t
    limit = ((d - d.mean(dim=1, keepdim=True)) ** 2).sum(dim=1).mean() / (2 * 6)
    errors = [
        abs(soft_target_kl(s, t, T).item() - limit.item()) / limit.item() for T in (10.0, 100.0, 1000.0)
    ]
    assert errors[-1] < 1e-3
    assert errors[0] > errors[1] > errors[2]  # converges monotonically (error is O(1/T))


def test_soft_target_kl_class_dim_last_matches_class_dim_one() -> None:
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)  # (N, C, L)
    torch.testing.assert_close(
        soft_target_kl(s.transpose(1, 2), t.transpose(1, 2), 2.0, class_dim=-1),
        soft_target_kl(s, t, 2.0, class_dim=1),
    )


def test_dense_kl_averages_over_all_voxels() -> None:
    n, c, d, h, w = 2, 4, 3, 5, 6
    s, t = torch.randn(n, c, d, h, w), torch.randn(n, c, d, h, w)
    flat_s = s.permute(0, 2, 3, 4, 1).reshape(-1, c)
    flat_t = t.permute(0, 2, 3, 4, 1).reshape(-1, c)
    expected = soft_target_kl(flat_s, flat_t, 2.5)
    torch.testing.assert_close(dense_kl(s, t, 2.5), expected)
    torch.testing.assert_close(soft_target_kl(s, t, 2.5), expected)
    # and per voxel it is torch's batchmean on (N*D*H*W, C)
    ref = F.kl_div(
        F.log_softmax(flat_s / 2.5, 1), F.log_softmax(flat_t / 2.5, 1), reduction="batchmean", log_target=True
    )
    torch.testing.assert_close(dense_kl(s, t, 2.5), ref * 2.5**2)


def test_dense_kl_rejects_classification_logits() -> None:
    with pytest.raises(ValueError, match="ndim >= 3"):
        dense_kl(torch.randn(2, 3), torch.randn(2, 3))


def test_shape_mismatch_error_names_both_shapes() -> None:
    with pytest.raises(ValueError) as info:
        soft_target_kl(torch.randn(2, 5), torch.randn(2, 6))
    assert "(2, 5)" in str(info.value) and "(2, 6)" in str(info.value)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 8, 8\)"):
        dense_kl(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(torch.randn(2, 3), torch.randn(2, 3), bad)


def test_mse_logits_ignores_temperature_and_registry() -> None:
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    expected = ((s - t) ** 2).mean()
    torch.testing.assert_close(mse_logits(s, t, 1.0), expected)
    torch.testing.assert_close(mse_logits(s, t, 7.0), expected)
    assert sorted(BUILTIN_LOSSES) == ["dense_kl", "mse_logits", "soft_target_kl"]
    assert BUILTIN_LOSSES["soft_target_kl"] is soft_target_kl and BUILTIN_LOSSES["dense_kl"] is dense_kl
    assert BUILTIN_LOSSES["mse_logits"] is mse_logits
    assert sorted(FEATURE_LOSSES) == ["attention", "rkd_distance", "similarity"]
    assert FEATURE_LOSSES["attention"] is attention_transfer
    assert FEATURE_LOSSES["similarity"] is similarity_preserving
    assert FEATURE_LOSSES["rkd_distance"] is rkd_distance
    for loss in BUILTIN_LOSSES.values():  # all follow the (student, teacher, temperature) signature
        x = torch.randn(2, 3, 4, 4)
        assert loss(x, x.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# hard_label_ce
# ----------------------------------------------------------------------------------------------------------
def test_hard_label_ce_matches_cross_entropy() -> None:
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 4, 2])
    torch.testing.assert_close(hard_label_ce(logits, labels), F.cross_entropy(logits, labels))
    dense, dense_labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    dense_labels[0, 0, 0] = 255
    torch.testing.assert_close(
        hard_label_ce(dense, dense_labels, ignore_index=255),
        F.cross_entropy(dense, dense_labels, ignore_index=255),
    )
    tokens = torch.randn(2, 6, 5)  # (N, L, C)
    token_labels = torch.randint(0, 5, (2, 6))
    torch.testing.assert_close(
        hard_label_ce(tokens, token_labels, class_dim=-1),
        F.cross_entropy(tokens.reshape(-1, 5), token_labels.reshape(-1)),
    )


def test_hard_label_ce_of_a_batch_without_labels_is_zero_not_nan() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    partly = torch.tensor([2, -1, 0, -1])
    torch.testing.assert_close(
        hard_label_ce(logits, partly, ignore_index=-1), F.cross_entropy(logits, partly, ignore_index=-1)
    )
    none = hard_label_ce(logits, torch.full((4,), -1), ignore_index=-1)
    none.backward()
    assert float(none.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


# ----------------------------------------------------------------------------------------------------------
# attention_transfer
# ----------------------------------------------------------------------------------------------------------
def test_attention_transfer_zero_when_maps_coincide_despite_channel_count() -> None:
    s = torch.randn(3, 4, 6, 6)
    t = s.repeat(1, 3, 1, 1)  # 12 channels, identical channel-mean of |f|^p
    for p in (1.0, 2.0, 3.0):
        assert attention_transfer(s, t, p).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_transfer_is_squared_l2_of_normalised_maps() -> None:
    s = torch.tensor([[[[1.0, 0.0]]]])  # map [1, 0]
    t = torch.tensor([[[[0.0, 2.0]]]])  # map [0, 4] -> normalised [0, 1]
    assert attention_transfer(s, t).item() == pytest.approx(2.0)  # ||[1, -1]||^2


def test_attention_transfer_positive_and_gradient_to_student_only() -> None:
    s = torch.randn(2, 4, 5, 5, requires_grad=True)
    t = torch.randn(2, 8, 5, 5, requires_grad=True)
    loss = attention_transfer(s, t)
    assert 0.0 < loss.item() <= 4.0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "mode"),
    [((2, 4, 4, 4), (2, 8, 8, 8), "bilinear"), ((2, 3, 2, 4, 4), (2, 6, 4, 8, 6), "trilinear")],
)
def test_attention_transfer_resizes_student_map(student_shape, teacher_shape, mode) -> None:
    s, t = torch.randn(student_shape), torch.randn(teacher_shape)
    a_s = F.interpolate(s.pow(2).mean(1, keepdim=True), size=t.shape[2:], mode=mode, align_corners=False)
    a_s = F.normalize(a_s.flatten(1), dim=1)
    a_t = F.normalize(t.pow(2).mean(1).flatten(1), dim=1)
    expected = ((a_s - a_t) ** 2).sum(1).mean()
    torch.testing.assert_close(attention_transfer(s, t), expected)
    assert expected > 0


def test_attention_transfer_rejects_unsupported_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        attention_transfer(torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="batch"):
        attention_transfer(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))


# ----------------------------------------------------------------------------------------------------------
# similarity_preserving
# ----------------------------------------------------------------------------------------------------------
def test_similarity_preserving_invariant_to_orthogonal_map_and_dimensionality() -> None:
    s = torch.randn(6, 2, 3, 3)  # 18 features per sample
    q, _ = torch.linalg.qr(torch.randn(40, 18))  # (40, 18) with orthonormal columns
    t = 2.5 * s.flatten(1) @ q.T  # (6, 40): same inner products up to scale
    assert similarity_preserving(s, t).item() == pytest.approx(0.0, abs=1e-6)


def test_similarity_preserving_hand_example_and_positive_for_unrelated() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G = I
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G = all ones -> rows [r, r], r = 1/sqrt(2)
    r = 1 / math.sqrt(2)
    assert similarity_preserving(s, t).item() == pytest.approx((2 * (1 - r) ** 2 + 2 * r**2) / 4, rel=1e-6)
    s2 = torch.randn(8, 16, requires_grad=True)
    loss = similarity_preserving(s2, torch.randn(8, 5, 4, 4))
    assert loss.item() > 0
    loss.backward()
    assert s2.grad is not None and s2.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# rkd_distance
# ----------------------------------------------------------------------------------------------------------
def test_rkd_distance_zero_for_identical_and_scale_invariant() -> None:
    s, t = torch.randn(8, 16), torch.randn(8, 32)
    assert rkd_distance(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_distance(3.0 * s, s).item() == pytest.approx(0.0, abs=1e-6)
    unscaled = rkd_distance(s, t).item()
    assert unscaled > 0
    assert rkd_distance(3.0 * s, t).item() == pytest.approx(unscaled, rel=1e-5)
    assert rkd_distance(s, 0.1 * t).item() == pytest.approx(unscaled, rel=1e-5)


def test_rkd_distance_hand_example() -> None:
    # student: points 0, 1, 2 on a line -> distances (1, 1, 2), mean 4/3 -> normalised (0.75, 0.75, 1.5)
    # teacher: equilateral triangle -> all normalised distances 1; smooth L1 (beta 1) is 0.5 x^2 here
    s = torch.tensor([[0.0], [1.0], [2.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    expected = (0.5 * 0.25**2 * 2 + 0.5 * 0.5**2) / 3
    assert rkd_distance(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_distance_gradients_finite_with_duplicate_embeddings() -> None:
    s = torch.randn(5, 4)
    s[1] = s[0]  # zero distance pair
    s.requires_grad_(True)
    t = torch.randn(5, 4, requires_grad=True)
    rkd_distance(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_rkd_distance_rejects_single_sample_and_batch_mismatch() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        rkd_distance(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="batch"):
        rkd_distance(torch.randn(3, 4), torch.randn(4, 4))


# ----------------------------------------------------------------------------------------------------------
# FeatureHint
# ----------------------------------------------------------------------------------------------------------
def test_feature_hint_identity_for_equal_shapes() -> None:
    hint = FeatureHint((2, 8, 4, 4), (2, 8, 4, 4))
    assert isinstance(hint.adapter, nn.Identity)
    assert list(hint.parameters()) == []
    s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(hint(s, t), F.mse_loss(s, t))


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "adapter_type", "weight_shape"),
    [
        ((2, 8, 4, 4), (2, 16, 4, 4), nn.Conv2d, (16, 8, 1, 1)),
        ((2, 8, 2, 4, 4), (2, 4, 2, 4, 4), nn.Conv3d, (4, 8, 1, 1, 1)),
        ((2, 32), (2, 64), nn.Linear, (64, 32)),
        ((2, 7, 32), (2, 7, 48), nn.Linear, (48, 32)),  # sequence features, last dim
    ],
)
def test_feature_hint_adapter_types(student_shape, teacher_shape, adapter_type, weight_shape) -> None:
    hint = FeatureHint(torch.Size(student_shape), torch.Size(teacher_shape))
    assert type(hint.adapter) is adapter_type
    assert tuple(hint.adapter.weight.shape) == weight_shape
    assert all(p.requires_grad for p in hint.parameters())
    s = torch.randn(3, *student_shape[1:])  # batch size may differ from the probe's
    t = torch.randn(3, *teacher_shape[1:], requires_grad=True)
    loss = hint(s, t)
    torch.testing.assert_close(loss, F.mse_loss(hint.adapter(s), t))
    loss.backward()
    assert t.grad is None and hint.adapter.weight.grad is not None


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "mode"),
    [((2, 4, 8, 8), (2, 6, 4, 4), "bilinear"), ((2, 4, 4, 4, 4), (2, 4, 2, 8, 8), "trilinear")],
)
def test_feature_hint_resizes_spatially(student_shape, teacher_shape, mode) -> None:
    hint = FeatureHint(student_shape, teacher_shape)
    s, t = torch.randn(student_shape), torch.randn(teacher_shape)
    adapted = F.interpolate(hint.adapter(s), size=t.shape[2:], mode=mode, align_corners=False)
    torch.testing.assert_close(hint(s, t), F.mse_loss(adapted, t))


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((2, 8, 4, 4), (2, 16)), ((2, 8), (2, 8, 4, 4)), ((2, 5, 8), (2, 6, 8)), ((8,), (8,))],
)
def test_feature_hint_unsupported_combinations(student_shape, teacher_shape) -> None:
    with pytest.raises(ValueError) as info:
        FeatureHint(student_shape, teacher_shape)
    message = str(info.value)
    assert str(tuple(student_shape)) in message and str(tuple(teacher_shape)) in message
    assert "supported" in message


def test_feature_hint_forward_checks_shapes() -> None:
    hint = FeatureHint((2, 8, 4, 4), (2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 9, 4, 4\)"):
        hint(torch.randn(2, 9, 4, 4), torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        hint(torch.randn(2, 8, 4, 4), torch.randn(3, 16, 4, 4))


def test_feature_hint_adapter_learns_student_to_teacher_map() -> None:
    student = torch.randn(16, 6, 5, 5)
    true_map = nn.Conv2d(6, 12, 1)
    with torch.no_grad():
        teacher = true_map(student)
    hint = FeatureHint(student.shape, teacher.shape)
    optimizer = torch.optim.Adam(hint.parameters(), lr=0.05)
    initial = hint(student, teacher).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = hint(student, teacher)
        loss.backward()
        optimizer.step()
    assert hint(student, teacher).item() < 0.1 * initial
