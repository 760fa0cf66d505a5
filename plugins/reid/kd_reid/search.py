"""The architecture search of KDAS-ReID, driven by kdcore's distillation hooks.

A search is a stage whose student is the supernet (``student.arch = "kdas_search"``) and whose options
say ``search = true``. kdcore trains the supernet's weights as usual, on one half of each identity's
images (:func:`kd_reid.data.search_split`), with the run's loss ``(1 - alpha) * (CE + triplet) + alpha *
KD(teacher, T)``. After every weight step (``kd_step_end``) the plugin takes one step on the architecture
parameters with the *same* loss on a P x K batch of the other half: the first-order approximation of
DARTS, with the distillation loss in the search objective as KDAS-ReID has it, at the temperature and
alpha of that step (anneal-to-one in the default). Only the architecture parameters receive gradients in
that step (``torch.autograd.grad``), so an accumulation window of the weight optimiser is never touched.

The architecture optimiser is Adam (lr ``options.arch_lr``, betas (0.5, 0.999), weight decay 1e-3, the
values of DARTS). When the stage ends (``kd_fit_end``) the final architecture parameters are derived
into a :class:`~kd_reid.search_space.Genotype`, written as ``genotype_<variant>.json`` in the run
directory with a picture of both cells in ``report/``, and published to later stages
(``run.publish_info("genotypes", ...)``): a variant with ``options.genotype = "<variant>"`` trains it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from kd_reid.data import IdentityBatchSampler, search_split
from kd_reid.losses import reid_kl, reid_loss
from kd_reid.search_space import Genotype, SearchNetwork

STATE_KEY = "kd_reid.search"


@dataclass
class SearchState:
    """The architecture optimiser and the sampler of held-out batches of a search stage."""

    optimizer: torch.optim.Optimizer
    sampler: IdentityBatchSampler
    generator: torch.Generator
    batches: Iterator[list[int]] | None = None


def is_search(run) -> bool:
    """Whether the stage being trained is an architecture search."""
    return bool(run.config["options"]["search"]) and isinstance(run.student, SearchNetwork)


def start(run) -> None:
    """Set up the architecture step of a search stage (``kd_fit_start``); check the configuration."""
    run.plugin_state.pop(STATE_KEY, None)
    if not run.config["options"]["search"]:
        if isinstance(run.student, SearchNetwork):
            raise ValueError(
                f"stage {run.stage!r} trains the supernet kdas_search but options.search is false; set "
                "options.search = true in its variant (the default config's 'search' variant does)"
            )
        return
    if not isinstance(run.student, SearchNetwork):
        return  # the teacher of a search variant is trained (or loaded) normally
    options, labels = run.config["options"], run.data.train.labels
    held_out = search_split(labels)[1]
    if not held_out:
        raise ValueError("the architecture search needs identities with two or more training images")
    generator = torch.Generator().manual_seed(int(run.config["seed"]) + 1)
    sampler = IdentityBatchSampler(
        labels, held_out, int(run.config["data"]["batch_size"]), int(options["instances"]), generator
    )
    optimizer = torch.optim.Adam(
        run.student.architecture_parameters(),
        lr=float(options["arch_lr"]),
        betas=(0.5, 0.999),
        weight_decay=1e-3,
    )
    run.plugin_state[STATE_KEY] = SearchState(optimizer, sampler, generator)


def _next_batch(run, state: SearchState) -> tuple[torch.Tensor, torch.Tensor]:
    if state.batches is None:
        state.batches = iter(state.sampler)
    try:
        indices = next(state.batches)
    except StopIteration:
        state.batches = iter(state.sampler)
        indices = next(state.batches)
    images, labels = default_collate([run.data.train[i] for i in indices])
    return images.to(run.device), labels.to(run.device)


def architecture_step(run) -> None:
    """One first-order DARTS step on the architecture parameters (``kd_step_end`` of a search stage)."""
    state: SearchState | None = run.plugin_state.get(STATE_KEY)
    if state is None or not is_search(run):
        return
    model: SearchNetwork = run.student
    params = model.architecture_parameters()
    images, labels = _next_batch(run, state)
    for param in params:
        param.requires_grad_(True)
    try:
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp):
            outputs = model(images)
            loss = reid_loss(outputs, labels)
            if run.teacher is not None:
                with torch.no_grad():
                    teacher_outputs = run.teacher(images)
                kd = reid_kl(outputs, teacher_outputs, run.temperature)
                loss = (1.0 - run.alpha) * loss + run.alpha * kd
        grads = torch.autograd.grad(loss, params)
    finally:
        for param in params:
            param.requires_grad_(False)
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    state.optimizer.step()
    for param in params:
        param.grad = None
    run.signals["search_loss"] = float(loss.detach())


def new_epoch(run) -> None:
    """Start the held-out batches of a new epoch from the (resumable) search generator."""
    state: SearchState | None = run.plugin_state.get(STATE_KEY)
    if state is not None:
        state.batches = None


def describe(run, metrics: dict[str, Any]) -> None:
    """Log the mean entropy of the architecture weights (falls as the search decides) at validation."""
    if STATE_KEY not in run.plugin_state or metrics.get("split") != "val":
        return
    with torch.no_grad():
        for name, alpha in (("normal", run.student.alpha_normal), ("reduce", run.student.alpha_reduce)):
            p = torch.softmax(alpha.float(), dim=-1)
            metrics[f"search_entropy_{name}"] = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


def finish(run, summary: dict[str, Any]) -> Genotype | None:
    """Derive the genotype at the end of a search stage, save, draw and publish it (``kd_fit_end``)."""
    if run.plugin_state.pop(STATE_KEY, None) is None or not is_search(run):
        return None
    genotype = run.student.derive()
    name = run.variant or "search"
    path = genotype_path(run.run_dir, name)
    if run.dist.is_main:
        genotype.save(path)
        from kd_reid.drawing import draw_genotype  # matplotlib only when a search ends

        draw_genotype(
            genotype, run.run_dir / "report" / f"cell_{name}.png", title=f"cells searched by {name!r}"
        )
    published = dict(run.info.get("genotypes") or {})
    published[name] = genotype.to_dict()
    run.publish_info("genotypes", published)
    summary["genotype"] = str(path.relative_to(run.run_dir))
    return genotype


def genotype_path(run_dir: Path, name: str) -> Path:
    """Where a search variant's genotype is written."""
    return Path(run_dir) / f"genotype_{name}.json"


def state_dict(run) -> dict[str, Any] | None:
    """The architecture optimiser and the held-out generator, for ``--resume`` at an epoch boundary."""
    state: SearchState | None = run.plugin_state.get(STATE_KEY)
    if state is None:
        return None
    return {"optimizer": state.optimizer.state_dict(), "generator": state.generator.get_state()}


def load_state_dict(run, saved: dict[str, Any]) -> None:
    """Restore :func:`state_dict` after ``kd_fit_start`` rebuilt the search state."""
    state: SearchState | None = run.plugin_state.get(STATE_KEY)
    if state is None:
        raise ValueError("the resumed stage saved an architecture search state but is not a search stage")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.generator.set_state(saved["generator"])
    state.batches = None
