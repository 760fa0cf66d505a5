"""Distillation losses: logit losses, feature losses and the FitNets hint adapter.

Every loss treats the teacher as a fixed target: teacher tensors are detached inside the loss, so gradients
only ever reach the student (and, for :func:`soft_target_kl`, a learnable temperature). All losses return a
0-dim tensor.

Two registries map config names to losses:

* :data:`BUILTIN_LOSSES` -- logit losses with the signature ``(student_logits, teacher_logits, temperature)``.
* :data:`FEATURE_LOSSES` -- parameter-free feature losses with the signature ``(student_feat, teacher_feat)``.

The FitNets "hint" loss is the :class:`FeatureHint` module rather than a registry entry because it owns
trainable adapter parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BUILTIN_LOSSES",
    "FEATURE_LOSSES",
    "FeatureHint",
    "LogitLoss",
    "attention_transfer",
    "dense_kl",
    "hard_label_ce",
    "mse_logits",
    "rkd_distance",
    "similarity_preserving",
    "soft_target_kl",
]

LogitLoss = Callable[[Tensor, Tensor, float | Tensor], Tensor]
"""A logit loss: ``(student_logits, teacher_logits, temperature) -> 0-dim loss``."""

FeatureLoss = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {what} shape {_shape(student)} does not match teacher {what} shape {_shape(teacher)}"
        )


def _check_same_batch(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.ndim == 0 or teacher.ndim == 0:
        raise ValueError(
            f"{what} need a batch dimension; got student shape {_shape(student)} and teacher shape "
            f"{_shape(teacher)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{what}: student and teacher batch sizes differ: student shape {_shape(student)}, "
            f"teacher shape {_shape(teacher)}"
        )


def _check_temperature(temperature: float | Tensor) -> float | Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"temperature must be a float or a one-element tensor, got a tensor of shape "
                f"{_shape(temperature)}"
            )
        # reshape keeps the autograd link, and makes the loss 0-dim even for a shape-(1,) temperature
        return temperature.reshape(())
    temperature = float(temperature)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


# ----------------------------------------------------------------------------------------------------------
# logit losses
# ----------------------------------------------------------------------------------------------------------
def soft_target_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float | Tensor = 1.0,
    class_dim: int = 1,
) -> Tensor:
    """Hinton et al. (2015) soft-target loss ``KL(softmax(t / T) || softmax(s / T)) * T**2``.

    Both distributions are computed with ``log_softmax`` and compared with
    ``F.kl_div(log_p_student, log_p_teacher, log_target=True)``; probabilities are never passed as the
    ``input`` of ``kl_div`` (a classic bug that silently gives a wrong loss).

    Reduction is "batchmean over every position": conceptually the class dim is moved last and all other
    dims are flattened into one sample dim of ``P`` positions; the loss is the summed KL divided by ``P``.

    * For classification logits ``(N, C)`` this is exactly torch's ``reduction="batchmean"``, i.e. the
      true KL divergence per sample.
    * For dense logits ``(N, C, *spatial)`` (segmentation, voxel-wise KD) it is the mean per-pixel/voxel
      KL over all ``N * prod(spatial)`` positions, so the loss scale does not depend on image size.
    * ``reduction="mean"`` is deliberately not used: it would also divide by ``C`` and silently shrink the
      loss (and its gradient) by the number of classes.

    The ``T**2`` factor keeps gradient magnitudes comparable across temperatures (soft-target gradients
    scale as ``1 / T**2``), as recommended by Hinton et al. (2015).

    Args:
        student_logits: unnormalised student scores, e.g. ``(N, C)`` or ``(N, C, H, W)``.
        teacher_logits: teacher scores of the same shape. Detached inside the loss.
        temperature: softening temperature ``T > 0``. May be a one-element tensor that requires grad
            (learnable temperature); the loss stays differentiable w.r.t. it. Tensor values are not
            range-checked (that would force a device sync), keep them positive, e.g. via ``exp``.
        class_dim: the dimension holding the classes (default 1, torch's convention; use -1 for
            ``(N, L, C)`` token logits).

    Returns:
        0-dim tensor: the mean KL per position, times ``T**2``.

    Raises:
        ValueError: if the shapes differ (the message names both), the input is 0-dim or empty,
            ``class_dim`` is out of range, or a float temperature is not positive.

    Example:
        >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
        >>> soft_target_kl(s, t, temperature=4.0).shape
        torch.Size([])
        >>> float(soft_target_kl(t, t))
        0.0
    """
    _check_same_shape(student_logits, teacher_logits, "logits")
    if student_logits.ndim == 0:
        raise ValueError("soft_target_kl needs logits with a class dimension, got 0-dim tensors")
    if not -student_logits.ndim <= class_dim < student_logits.ndim:
        raise ValueError(
            f"class_dim={class_dim} is out of range for logits of shape {_shape(student_logits)}"
        )
    num_classes = student_logits.shape[class_dim]
    positions = student_logits.numel() // num_classes if num_classes else 0
    if positions == 0:
        raise ValueError(f"soft_target_kl got empty logits of shape {_shape(student_logits)}")
    temperature = _check_temperature(temperature)

    log_p_student = F.log_softmax(student_logits / temperature, dim=class_dim)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=class_dim)
    # Summing the pointwise KL and dividing by the number of positions is identical to moving the class
    # dim last, flattening to (positions, C) and using reduction="batchmean" -- without the copy.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True) / positions
    return kl * temperature**2


def dense_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Dense (pixel-/voxel-wise) soft-target KD for segmentation logits ``(N, C, *spatial)``.

    Identical to ``soft_target_kl(student_logits, teacher_logits, temperature, class_dim=1)``: the KL is
    averaged over all ``N * prod(spatial)`` positions and scaled by ``T**2``.

    Args:
        student_logits: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` (any ``ndim >= 3``) student logits.
        teacher_logits: teacher logits of the same shape. Detached inside the loss.
        temperature: softening temperature (float or learnable one-element tensor).

    Returns:
        0-dim tensor.

    Raises:
        ValueError: if ``ndim < 3`` (use :func:`soft_target_kl` for ``(N, C)``) or the shapes differ.

    Example:
        >>> s, t = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
        >>> dense_kl(s, t, temperature=2.0).shape
        torch.Size([])
    """
    if student_logits.ndim < 3 or teacher_logits.ndim < 3:
        raise ValueError(
            "dense_kl expects (N, C, *spatial) logits with ndim >= 3, got student shape "
            f"{_shape(student_logits)} and teacher shape {_shape(teacher_logits)}; "
            "use soft_target_kl for (N, C) logits"
        )
    return soft_target_kl(student_logits, teacher_logits, temperature, class_dim=1)


def mse_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Plain logit matching (Ba & Caruana, 2014): ``mean((student_logits - teacher_logits)**2)``.

    The temperature is accepted for signature compatibility with :data:`LogitLoss` and ignored.

    Args:
        student_logits: student logits of any shape.
        teacher_logits: teacher logits of the same shape. Detached inside the loss.
        temperature: ignored.

    Returns:
        0-dim tensor: the mean squared difference over all elements.

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> float(mse_logits(torch.zeros(2, 3), torch.ones(2, 3)))
        1.0
    """
    del temperature  # unused by design
    _check_same_shape(student_logits, teacher_logits, "logits")
    return F.mse_loss(student_logits, teacher_logits.detach())


def hard_label_ce(logits: Tensor, targets: Tensor, class_dim: int = 1, ignore_index: int = -100) -> Tensor:
    """Cross-entropy against ground-truth labels (the "hard" part of a KD objective) for batches that may
    hold only unlabelled items.

    ``F.cross_entropy`` with mean reduction over the non-ignored positions, and 0 (not NaN) when a batch
    has no labelled position at all: in semi-supervised distillation a batch may hold only unlabelled
    items (``ignore_index``), and then only the distillation term should teach. The count of labelled
    positions stays on the device (no host sync).
    ``F.cross_entropy`` already expects classes on dim 1 for dense inputs (``(N, C, *spatial)`` with
    ``(N, *spatial)`` targets); for another ``class_dim`` (e.g. -1 for ``(N, L, C)``) the class dim is moved
    to position 1 first.

    A task whose batches always hold labels keeps the default ``Task.supervised_loss``, PyTorch's
    ``cross_entropy``: the count and the division here are four more operations a step, 3 % of a small
    model's step (BENCHMARKS.md, engine overhead).

    Args:
        logits: ``(N, C)`` or ``(N, C, *spatial)`` unnormalised scores (classes on ``class_dim``).
        targets: integer class indices with the logits' shape minus the class dim (or class
            probabilities of the logits' shape, as ``F.cross_entropy`` allows).
        class_dim: dimension of ``logits`` holding the classes.
        ignore_index: target value that is ignored (e.g. unlabelled voxels).

    Returns:
        0-dim tensor.

    Example:
        >>> logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
        >>> hard_label_ce(logits, labels).shape
        torch.Size([])
    """
    if logits.ndim == 0 or not -logits.ndim <= class_dim < logits.ndim:
        raise ValueError(f"class_dim={class_dim} is out of range for logits of shape {_shape(logits)}")
    if class_dim not in (1, 1 - logits.ndim):
        logits = logits.movedim(class_dim, 1)
        if targets.is_floating_point() and targets.ndim == logits.ndim:  # class-probability targets
            targets = targets.movedim(class_dim, 1)
    if targets.is_floating_point():
        return F.cross_entropy(logits, targets)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------
# feature losses
# ----------------------------------------------------------------------------------------------------------
_INTERP_MODES = {4: "bilinear", 5: "trilinear"}


def _attention_map(features: Tensor, p: float) -> Tensor:
    """``mean_c |f|^p`` -> ``(N, 1, *spatial)``."""
    return features.abs().pow(p).mean(dim=1, keepdim=True)


def attention_transfer(student_features: Tensor, teacher_features: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention transfer (Zagoruyko & Komodakis, 2017).

    The attention map of a feature tensor is the channel mean of ``|f|**p``, flattened per sample and
    L2-normalised. The loss is the **squared** L2 distance between the normalised student and teacher maps,
    averaged over the batch::

        a = normalize(mean_c |f|**p flattened)        # (N, H*W), unit L2 norm per sample
        loss = mean_n || a_s[n] - a_t[n] ||_2 ** 2     # in [0, 4]

    The squared distance is used because it is smooth everywhere (the plain norm has a kink at 0); it
    equals the authors' reference code up to that code's extra ``1 / (H*W)`` averaging. Because the map
    averages over channels and is normalised, student and teacher channel counts may differ. If the spatial
    sizes differ, the student map is resized to the teacher's with ``F.interpolate`` (bilinear for 4-D,
    trilinear for 5-D, ``align_corners=False``) before flattening.

    Args:
        student_features: ``(N, C_s, H, W)`` or ``(N, C_s, D, H, W)``.
        teacher_features: ``(N, C_t, H', W')`` or ``(N, C_t, D', H', W')``, same ndim and batch size.
            Detached inside the loss.
        p: exponent of the attention map (``p > 0``; the paper uses 2).

    Returns:
        0-dim tensor.

    Raises:
        ValueError: for unsupported or mismatching ndim / batch size, or ``p <= 0``.

    Example:
        >>> s = torch.randn(2, 8, 16, 16)
        >>> t = torch.cat([s, s], dim=1)  # 16 channels, same attention map
        >>> round(float(attention_transfer(s, t)), 6)
        0.0
    """
    if student_features.ndim not in _INTERP_MODES or student_features.ndim != teacher_features.ndim:
        raise ValueError(
            "attention_transfer expects 4-D (N, C, H, W) or 5-D (N, C, D, H, W) features of the same ndim, "
            f"got student shape {_shape(student_features)} and teacher shape {_shape(teacher_features)}"
        )
    _check_same_batch(student_features, teacher_features, "attention_transfer")
    if not p > 0:
        raise ValueError(f"attention_transfer needs p > 0, got {p}")

    a_s = _attention_map(student_features, p)
    a_t = _attention_map(teacher_features.detach(), p)
    if a_s.shape[2:] != a_t.shape[2:]:
        a_s = F.interpolate(a_s, size=a_t.shape[2:], mode=_INTERP_MODES[a_s.ndim], align_corners=False)
    a_s = F.normalize(a_s.flatten(1), p=2.0, dim=1)
    a_t = F.normalize(a_t.flatten(1), p=2.0, dim=1)
    return (a_s - a_t).pow(2).sum(dim=1).mean()


def _row_normalised_gram(features: Tensor) -> Tensor:
    flat = features.reshape(features.shape[0], -1)
    return F.normalize(flat @ flat.transpose(0, 1), p=2.0, dim=1)


def similarity_preserving(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, 2019).

    Each feature tensor is flattened per sample to ``F`` of shape ``(N, -1)``; the batch similarity matrix
    ``G = F @ F.T`` (``N x N``) is L2-normalised row-wise, and the loss is
    ``||G_s - G_t||_F**2 / N**2``. Only within-batch similarities are compared, so the student and teacher
    feature sizes (channels, spatial size, ndim) may differ freely.

    Args:
        student_features: ``(N, ...)`` student activations, any number of dims >= 2.
        teacher_features: ``(N, ...)`` teacher activations, same batch size. Detached inside the loss.

    Returns:
        0-dim tensor.

    Raises:
        ValueError: if a tensor has fewer than 2 dims or the batch sizes differ.

    Example:
        >>> s, t = torch.randn(4, 8, 5, 5), torch.randn(4, 32)
        >>> similarity_preserving(s, t).shape
        torch.Size([])
    """
    if student_features.ndim < 2 or teacher_features.ndim < 2:
        raise ValueError(
            "similarity_preserving expects (N, ...) features with ndim >= 2, got student shape "
            f"{_shape(student_features)} and teacher shape {_shape(teacher_features)}"
        )
    _check_same_batch(student_features, teacher_features, "similarity_preserving")
    n = student_features.shape[0]
    g_s = _row_normalised_gram(student_features)
    g_t = _row_normalised_gram(teacher_features.detach())
    return (g_s - g_t).pow(2).sum() / (n * n)


def _normalised_pairwise_distances(embeddings: Tensor, eps: float) -> Tensor:
    """Off-diagonal pairwise Euclidean distances, divided by their mean -> ``(N * (N - 1),)``."""
    emb = embeddings.reshape(embeddings.shape[0], -1)
    if emb.dtype in (torch.float16, torch.bfloat16):  # the Gram trick below cancels badly in half precision
        emb = emb.float()
    sq_norms = emb.pow(2).sum(dim=1)
    sq_dist = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * (emb @ emb.transpose(0, 1))
    # clamp before sqrt: avoids NaN gradients at zero distance and negative values from rounding
    dist = sq_dist.clamp_min(eps).sqrt()
    n = emb.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=emb.device)
    dist = dist[off_diagonal]
    return dist / dist.mean().clamp_min(eps)


def rkd_distance(student_embeddings: Tensor, teacher_embeddings: Tensor, eps: float = 1e-12) -> Tensor:
    """Relational KD, distance-wise loss (Park et al., 2019).

    Pairwise Euclidean distances within the batch are computed for student and teacher, each divided by
    its mean over the ``N * (N - 1)`` off-diagonal pairs (so the loss is invariant to a global scaling of
    either embedding space), and compared with smooth L1 (Huber, ``beta=1``) averaged over the off-diagonal
    pairs. The teacher side is computed without gradient. Used for metric-learning / re-identification
    embeddings, whose dimensionality may differ between student and teacher.

    Args:
        student_embeddings: ``(N, D_s)`` (higher-dim inputs are flattened per sample); ``N >= 2``.
        teacher_embeddings: ``(N, D_t)``, same batch size.
        eps: clamp for squared distances and for the mean distance (numerical safety).

    Returns:
        0-dim tensor.

    Raises:
        ValueError: if the batch sizes differ, a tensor has fewer than 2 dims, or ``N < 2``.

    Example:
        >>> e = torch.randn(6, 16)
        >>> torch.allclose(rkd_distance(3.0 * e, e), torch.tensor(0.0), atol=1e-6)
        True
    """
    if student_embeddings.ndim < 2 or teacher_embeddings.ndim < 2:
        raise ValueError(
            "rkd_distance expects (N, D) embeddings, got student shape "
            f"{_shape(student_embeddings)} and teacher shape {_shape(teacher_embeddings)}"
        )
    _check_same_batch(student_embeddings, teacher_embeddings, "rkd_distance")
    if student_embeddings.shape[0] < 2:
        raise ValueError(
            f"rkd_distance needs at least 2 samples per batch, got shape {_shape(student_embeddings)}"
        )
    with torch.no_grad():
        d_t = _normalised_pairwise_distances(teacher_embeddings, eps)
    d_s = _normalised_pairwise_distances(student_embeddings, eps)
    return F.smooth_l1_loss(d_s, d_t.to(d_s.dtype))


# ----------------------------------------------------------------------------------------------------------
# FitNets hint
# ----------------------------------------------------------------------------------------------------------
_HINT_SUPPORTED = (
    "supported: student and teacher features with the same number of dims, either 2-D (N, F) or 3-D "
    "(N, L, F) adapted with nn.Linear on the last dim (3-D needs equal L), 4-D (N, C, H, W) adapted with a "
    "1x1 nn.Conv2d, or 5-D (N, C, D, H, W) adapted with a 1x1 nn.Conv3d (4-D/5-D spatial sizes may differ)"
)


class FeatureHint(nn.Module):
    """FitNets hint regression (Romero et al., 2015): adapt student features, then MSE to the teacher's.

    The adapter is built from the feature shapes of one probe forward (shapes include the batch dim,
    which is ignored):

    ========================  =====================================  ================================
    feature ndim              channels/features differ               equal
    ========================  =====================================  ================================
    2-D ``(N, F)``            ``nn.Linear(F_s, F_t)``                ``nn.Identity`` (no parameters)
    3-D ``(N, L, F)``         ``nn.Linear(F_s, F_t)`` on last dim    ``nn.Identity``
    4-D ``(N, C, H, W)``      ``nn.Conv2d(C_s, C_t, 1)``             ``nn.Identity``
    5-D ``(N, C, D, H, W)``   ``nn.Conv3d(C_s, C_t, 1)``             ``nn.Identity``
    ========================  =====================================  ================================

    For 4-D/5-D features with different spatial sizes, the adapted student feature is resized to the
    teacher's with ``F.interpolate`` (bilinear/trilinear, ``align_corners=False``). 3-D sequence features
    must have the same length: interpolating token sequences (which may carry class tokens) is not
    meaningful in general. The adapter's parameters are trainable and must be added to the optimizer.

    Args:
        student_shape: shape of the student feature, e.g. ``(N, 64, 32, 32)``.
        teacher_shape: shape of the teacher feature, e.g. ``(N, 256, 16, 16)``.

    Raises:
        ValueError: for unsupported combinations (different ndim, ndim outside 2..5, different 3-D
            sequence length); the message names both shapes and what is supported.

    Example:
        >>> hint = FeatureHint((2, 16, 8, 8), (2, 32, 4, 4))
        >>> type(hint.adapter).__name__
        'Conv2d'
        >>> hint(torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)).shape
        torch.Size([])
    """

    def __init__(self, student_shape: torch.Size | Sequence[int], teacher_shape: torch.Size | Sequence[int]):
        super().__init__()
        s_shape, t_shape = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
        self.student_shape = torch.Size(s_shape)
        self.teacher_shape = torch.Size(t_shape)
        ndim = len(s_shape)
        if ndim != len(t_shape) or ndim not in (2, 3, 4, 5):
            raise ValueError(
                f"FeatureHint cannot adapt student features of shape {s_shape} to teacher features of shape "
                f"{t_shape}; {_HINT_SUPPORTED}"
            )
        if ndim == 3 and s_shape[1] != t_shape[1]:
            raise ValueError(
                f"FeatureHint cannot adapt student features of shape {s_shape} to teacher features of shape "
                f"{t_shape}: sequence lengths differ; {_HINT_SUPPORTED}"
            )
        self.adapter: nn.Module
        if ndim in (2, 3):
            f_s, f_t = s_shape[-1], t_shape[-1]
            self.adapter = nn.Identity() if f_s == f_t else nn.Linear(f_s, f_t)
        else:
            c_s, c_t = s_shape[1], t_shape[1]
            conv = nn.Conv2d if ndim == 4 else nn.Conv3d
            self.adapter = nn.Identity() if c_s == c_t else conv(c_s, c_t, kernel_size=1)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        """Return ``mse(adapt(student_feat), teacher_feat.detach())`` (a 0-dim tensor).

        Args:
            student_feat: student feature matching ``student_shape`` except possibly the batch size.
            teacher_feat: teacher feature matching ``teacher_shape`` except possibly the batch size; same
                batch size as ``student_feat``.

        Raises:
            ValueError: if the features do not match the shapes the adapter was built for.
        """
        if (
            student_feat.shape[1:] != self.student_shape[1:]
            or teacher_feat.shape[1:] != self.teacher_shape[1:]
            or student_feat.shape[:1] != teacher_feat.shape[:1]
        ):
            raise ValueError(
                f"FeatureHint was built for student shape {tuple(self.student_shape)} and teacher shape "
                f"{tuple(self.teacher_shape)} (batch size may vary but must agree), got student shape "
                f"{_shape(student_feat)} and teacher shape {_shape(teacher_feat)}"
            )
        adapted = self.adapter(student_feat)
        if adapted.ndim in _INTERP_MODES and adapted.shape[2:] != teacher_feat.shape[2:]:
            adapted = F.interpolate(
                adapted, size=teacher_feat.shape[2:], mode=_INTERP_MODES[adapted.ndim], align_corners=False
            )
        return F.mse_loss(adapted, teacher_feat.detach())

    def extra_repr(self) -> str:
        return f"student_shape={tuple(self.student_shape)}, teacher_shape={tuple(self.teacher_shape)}"


# ----------------------------------------------------------------------------------------------------------
# registries
# ----------------------------------------------------------------------------------------------------------
BUILTIN_LOSSES: dict[str, LogitLoss] = {
    "soft_target_kl": soft_target_kl,
    "dense_kl": dense_kl,
    "mse_logits": mse_logits,
}
"""Logit losses by config name; each is called as ``loss(student_logits, teacher_logits, temperature)``."""

FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "attention": attention_transfer,
    "similarity": similarity_preserving,
    "rkd_distance": rkd_distance,
}
"""Parameter-free feature losses by config name; called as ``loss(student_feat, teacher_feat)``.
The "hint" loss is :class:`FeatureHint` (it owns parameters)."""
