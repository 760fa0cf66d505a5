"""kd-liverct: 3-D liver CT segmentation distilled through a growing teacher assistant (GTAN).

Registers the task ``liverct/liver`` with kdcore (entry point ``liverct`` in the group ``kd``) and the
distillation hooks that drive the growing assistant (:mod:`kd_liverct.gtan`). Data: an MSD Task03_Liver
or LiTS folder with ``--data PATH``; without one, a deterministic abdominal CT phantom in the MSD layout
(:mod:`kd_liverct.phantom`) is written once under ``$KD_DATA_HOME`` (default ``~/.cache/kd``) and read
back through the same loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kd_liverct.architectures import ARCHITECTURES
from kd_liverct.options import DEFAULT_OPTIONS
from kdcore import Task, TaskData, data_home, hookimpl, lazy

__version__ = "0.1.0"

#: The four-way comparison of the issue, in one run: the teacher trains once, then each variant's student
#: learns from it (GTAN first: its student is the run's primary, ``checkpoints/best.pt``), and the no-KD
#: baseline trains last. ``kd train --plugin liverct --variant kd`` trains one of them.
VARIANTS: dict[str, Any] = {
    "gtan": {"options": {"gtan": True}},
    "kd": {},
    "takd": {"distill": {"strategy": "assistant_chain", "assistants": ["unet_assistant"]}},
}

#: The CPU default: about 8 minutes on 2 cores for the teacher and all four students (BENCHMARKS.md
#: measures it over 3 seeds). Sharp targets (T = 1) and a light KD weight (alpha 0.3) are what made KD beat
#: no KD on the phantom; tumour-weighted crops and 100 teacher epochs give a teacher worth copying. The
#: README and configs/gpu.toml give the GPU-sized config.
DEFAULTS: dict[str, Any] = {
    "teacher": {"arch": "unet_teacher_cpu", "epochs": 100, "lr": 3e-3},
    "student": {"arch": "unet_100k", "epochs": 80, "lr": 3e-3},
    "data": {"batch_size": 2, "eval_batch_size": 1},
    "distill": {
        "loss": "dice_kl",
        "temperature": {"name": "constant", "value": 1.0},
        "alpha": {"name": "constant", "value": 0.3},
    },
    "train": {"log_every": 5, "eval_every": 5},
    "options": {
        **DEFAULT_OPTIONS,
        "spacing": [4.0, 4.0, 6.0],  # coarse enough for 2 CPU cores; the GPU config uses 2 x 2 x 4 mm
        "patch_size": [48, 48, 32],
        "crop_ratios": [1.0, 1.0, 2.0],  # background, liver, tumour: tumour patches twice as often
        "gtan": False,  # the gtan variant turns it on
        "gtan_start": 0.7,
        "gtan_grow_until": 0.6,
        "gtan_alpha": 0.9,  # the assistant's own KD weight: (1 - a) * (Dice + CE) + a * KD(teacher)
        "phantom_cases": 16,
        "phantom_size": "small",
        "overlay_cases": 1,  # validation cases drawn in report/overlays/ per stage; 0: none
    },
    "variants": VARIANTS,
}


def phantom_root(options: Mapping[str, Any], seed: int = 0) -> Path:
    """The phantom data set for ``options``, written on first use (atomically) and reused after.

    Training uses seed 0; another ``seed`` draws other, independent cases (a held-out test set:
    ``benchmarks/liverct_variants.py`` scores every variant on seed 1's cases with ``kd eval --data``).
    """
    from kd_liverct.phantom import PHANTOM_VERSION, write_phantom_dataset

    cases, size = int(options["phantom_cases"]), str(options["phantom_size"])
    root = data_home() / "liverct" / f"phantom-v{PHANTOM_VERSION}-{size}-{cases}-seed{seed}"
    if not (root / "dataset.json").is_file():
        write_phantom_dataset(root, num_cases=cases, seed=seed, size=size)
    return root


def build_data(config: Mapping[str, Any]) -> TaskData:
    """``--data PATH`` (MSD or LiTS) or, without one, the embedded phantom."""
    from kd_liverct.data import build_datasets

    options = config["options"]
    root = config["data"]["path"] or phantom_root(options)
    return build_datasets(root, options, int(config["seed"]))


LIVER = Task(
    name="liver",
    description="3-D liver + tumour CT segmentation (MSD Task03_Liver / LiTS; embedded phantom), GTAN",
    build_data=build_data,
    build_model=lazy("kd_liverct.models:build_model"),  # torch and MONAI when a run starts
    architectures=tuple(ARCHITECTURES),
    defaults=DEFAULTS,
    evaluate=lazy("kd_liverct.metrics:evaluate_segmentation"),
    main_metric="dice",
    supervised_loss=lazy("kd_liverct.metrics:dice_ce_loss"),
    split_batch=lazy("kd_liverct.metrics:split_image_label"),
    build_eval_data=lazy("kd_liverct.data:build_eval_data"),  # kd eval --data: every case, not a split
)


@hookimpl
def kd_register_tasks(register):
    """Register the ``liver`` task."""
    register(LIVER)


@hookimpl
def kd_register_losses(register):
    """Register ``dice_kl``: dense KL plus a soft Dice on the teacher's probabilities (class-balanced)."""
    from kd_liverct.losses import dice_kl

    register("dice_kl", dice_kl)


@hookimpl
def kd_fit_start(run):
    """Restart the random crops and flips at the run seed, so every stage sees the same patches; build
    the growing assistant when the student stage of a GTAN run starts."""
    from kd_liverct import gtan
    from kd_liverct.data import ReseedableDataset

    if isinstance(run.data.train, ReseedableDataset):
        run.data.train.reseed(int(run.config["seed"]))
    gtan.start(run)


@hookimpl
def kd_step_start(run, step, batch):
    """Grow the assistant to this step's width."""
    from kd_liverct import gtan

    gtan.grow(run)


@hookimpl
def kd_soft_targets(run, inputs, batch):
    """In a GTAN student stage, the assistant's logits (after its own step); otherwise kdcore's default."""
    from kd_liverct import gtan

    return gtan.soft_targets(run, inputs, batch)


@hookimpl
def kd_epoch_end(run, epoch, metrics):
    """Log the assistant's width and active parameter count with each validation record."""
    from kd_liverct import gtan

    gtan.describe(run, metrics)


@hookimpl
def kd_fit_end(run, summary):
    """Save the assistant and put its final size in the stage summary; draw the stage's overlays."""
    from kd_liverct import gtan
    from kd_liverct.overlays import draw_stage_overlays  # matplotlib only when a stage ends

    gtan.finish(run, summary)
    draw_stage_overlays(run, summary)


@hookimpl
def kd_state_dict(run):
    """The random crops' and flips' generators and, in a GTAN stage, the assistant (for ``--resume``)."""
    from kd_liverct import gtan
    from kd_liverct.data import ReseedableDataset

    state: dict[str, Any] = {}
    if isinstance(run.data.train, ReseedableDataset):
        state["data"] = run.data.train.rng_state()
    assistant = gtan.state_dict(run)
    if assistant is not None:
        state["gtan"] = assistant
    return {"liverct": state}


@hookimpl
def kd_load_state_dict(run, state):
    """Restore what ``kd_state_dict`` saved, after ``kd_fit_start`` rebuilt the stage's objects."""
    from kd_liverct import gtan

    mine = state.get("liverct", {})
    if "data" in mine:
        run.data.train.set_rng_state(mine["data"])
    if "gtan" in mine:
        gtan.load_state_dict(run, mine["gtan"])


@hookimpl
def kd_register_commands(cli):
    """Add ``kd predict``: segment new CT volumes with a trained liverct run."""
    from kd_liverct.predict_command import register_command

    register_command(cli)
