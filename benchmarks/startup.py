"""Start-up: wall time of the ``kd`` commands that only list or explain, with every installed plugin.

Each command runs as a new process (``.venv/bin/kd ...``, output discarded), ``--repeats`` times after
one warm-up; the median is reported beside ``python -c "import torch"`` on the same machine, the floor a
command that imports torch cannot go below. ``KD_LOAD_PLUGINS`` is cleared so that every installed
plugin loads, as for a user.

    .venv/bin/python benchmarks/startup.py [--repeats 5]

Prints a table and writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import environment, write_result
from rich.console import Console
from rich.table import Table

KD = str(Path(sys.executable).with_name("kd"))
COMMANDS: dict[str, list[str]] = {
    "kd plugins": [KD, "plugins"],
    "kd tasks": [KD, "tasks"],
    "kd --help": [KD, "--help"],
    "kd train --help": [KD, "train", "--help"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
}


def wall_seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "KD_LOAD_PLUGINS"}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        wall_seconds(command, env)  # warm-up: the OS file cache
    for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits every command
        for name, command in COMMANDS.items():
            times[name].append(wall_seconds(command, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    table = Table(title=f"start-up, median of {args.repeats} (every installed plugin)")
    table.add_column("command")
    table.add_column("seconds", justify="right")
    for name, value in medians.items():
        table.add_row(name, f"{value:.2f}")
    Console().print(table)
    write_result(args.out, {"benchmark": "startup", **environment(), "median_s": medians, "runs_s": times})


if __name__ == "__main__":
    main()
