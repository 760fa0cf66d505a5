"""Shared by the liverct tests: the plugin-only environment and a tiny run (a stage takes a few seconds).

Imported as ``from liverct_tiny import ...`` (pytest puts this folder on ``sys.path``; it is not a package).
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from kd_liverct import DEFAULTS
from kdcore.config import resolve
from kdcore.engine import FitResult, fit
from kdcore.plugins import get_registry

#: Four phantom cases (three to train, one to validate), small patches, a 30k teacher, and one GTAN
#: student instead of the default's four-way comparison.
TINY = (
    "options.gtan=true",
    "options.phantom_cases=4",
    "options.patch_size=[32, 32, 16]",
    "options.samples_per_volume=2",
    "teacher.arch='unet_30k'",
    "teacher.epochs=2",
    "student.epochs=4",
    "train.log_every=1",
    "train.eval_every=1",
    "train.progress=false",
    "distill.baseline=false",
)

#: On top of :data:`TINY`: a weak teacher and a short student stage with a high learning rate, enough for
#: the student to find the liver (dice about 0.45) in a few seconds. The ``run_dir`` fixture trains it.
TRAINED_RUN = (
    "options.gtan=false",
    "teacher.epochs=1",
    "teacher.lr=0.01",
    "student.arch='unet_30k'",
    "student.epochs=2",
    "student.lr=0.02",
)


def tiny_fit(out_dir: Path, *sets: str, variants: dict | None = None) -> FitResult:
    """Fit the liver task with :data:`TINY` and then ``sets`` (later items win) into ``out_dir``.

    ``variants`` replaces the default's four variants (none by default: one student under the base config).
    """
    config = resolve(DEFAULTS, sets=[*TINY, *sets], overrides={"plugin": "liverct", "out_dir": str(out_dir)})
    config["task"], config["variants"] = "liver", variants or {}
    return fit(config, get_registry(), console=Console(file=io.StringIO()))
