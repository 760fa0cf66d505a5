"""What every benchmark script records beside its figures, and how it writes them."""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

import torch

from kdcore.checkpoint import atomic_write_text


def environment() -> dict[str, Any]:
    """Date, machine, torch version and CPU threads: the context a figure needs to be read."""
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``result`` as indented JSON at ``path`` (atomically, parents created)."""
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")
