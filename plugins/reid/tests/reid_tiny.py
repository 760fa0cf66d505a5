"""Shared by the reid tests: the plugin-only environment and a tiny run (a stage takes seconds).

Imported as ``from reid_tiny import ...`` (pytest puts this folder on ``sys.path``; it is not a package).
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from kd_reid import DEFAULTS
from kdcore.config import resolve
from kdcore.engine import FitResult, fit
from kdcore.plugins import get_registry

#: A synthetic set of 16 training and 12 test identities at 32 x 16 pixels, a 3-cell search space of
#: 2-node cells, a few epochs per stage. With 8 teacher and 12 student epochs the run learnt too little to
#: be sure of on every CPU: on an AVX-512 host (other float kernels, another training path) the teacher
#: reached 0.18-0.22 mAP and the student 0.12-0.16 over seeds 0-2, against 0.08 for chance. With 16 and
#: 24: teacher 0.32-0.37, student 0.20-0.25.
TINY = (
    "options.synthetic_train_ids=16",
    "options.synthetic_test_ids=12",
    "options.height=32",
    "options.width=16",
    "options.channels=4",
    "options.search_channels=4",
    "options.layers=3",
    "options.search_layers=3",
    "options.steps=2",
    "options.embedding=32",
    "options.ranked_queries=2",
    "data.batch_size=16",
    "teacher.epochs=16",
    "student.epochs=24",
    "variants.search.student.epochs=3",
    "train.log_every=1",
    "train.eval_every=3",
    "train.progress=false",
)


def tiny_config(out_dir: Path, *sets: str) -> dict:
    """The person task's default with :data:`TINY` and then ``sets`` (later items win)."""
    config = resolve(DEFAULTS, sets=[*TINY, *sets], overrides={"plugin": "reid", "out_dir": str(out_dir)})
    config["task"] = "person"
    return config


def tiny_fit(out_dir: Path, *sets: str) -> FitResult:
    """Fit the person task with :data:`TINY` and ``sets`` into ``out_dir``."""
    return fit(tiny_config(out_dir, *sets), get_registry(), console=Console(file=io.StringIO()))
