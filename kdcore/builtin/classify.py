"""Built-in ``classify`` plugin: image-classification distillation, the first thing most users try.

Data: an ImageFolder tree given with ``--data PATH`` (``PATH/train/<class>/*.png`` and ``PATH/val/...``,
or one ``PATH/<class>/*`` tree split by ``options.val_fraction``), or by default the 8×8 handwritten
digits that ship with scikit-learn (1,797 real images, 10 classes). Models: small built-in CNNs and an
MLP for CPU runs, and torchvision's ResNet-18 and MobileNetV3-Small (randomly initialised: no weights are
downloaded).
"""

from __future__ import annotations

from typing import Any

import click

from kdcore.hookspecs import hookimpl
from kdcore.lazy import lazy
from kdcore.tasks import Task

DIGITS_DEFAULTS: dict[str, Any] = {
    "teacher": {"arch": "cnn_large", "epochs": 12, "lr": 2e-3},
    "student": {"arch": "cnn_small", "epochs": 30, "lr": 5e-3},
    "distill": {
        "temperature": {"name": "constant", "value": 4.0},
        "alpha": {"name": "constant", "value": 0.5},
    },
    "data": {"batch_size": 64},
    "options": {"image_size": 32, "channels": 3, "val_fraction": 0.2, "train_fraction": 1.0},
}

ARCHITECTURES = ("mlp", "cnn_small", "cnn_large", "resnet18", "mobilenet_v3_small")


# --- registration --------------------------------------------------------------------------------

TASK = Task(
    name="digits",
    description="Image classification: scikit-learn digits by default, or any ImageFolder with --data",
    build_data=lazy("kdcore.builtin.image_data:build_data"),
    build_model=lazy("kdcore.builtin.image_models:build_model"),
    architectures=ARCHITECTURES,
    defaults=DIGITS_DEFAULTS,
)


@hookimpl
def kd_register_tasks(register):
    register(TASK)


@hookimpl
def kd_register_commands(cli):
    @cli.command("digits-to-imagefolder")
    @click.argument("path", type=click.Path(file_okay=False))
    @click.option("--val-fraction", default=0.2, show_default=True, help="Share of images in val/.")
    def digits_to_imagefolder(path: str, val_fraction: float) -> None:
        """Write the scikit-learn digits as an ImageFolder tree of PNGs at PATH (for --data)."""
        from kdcore.builtin.image_data import write_digits_imagefolder

        root = write_digits_imagefolder(path, val_fraction=val_fraction)
        click.echo(f"wrote {sum(1 for _ in root.rglob('*.png'))} images to {root}")
