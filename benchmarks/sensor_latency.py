"""Sensor transfer at inference: the old-sensor teacher against the new-sensor student on this CPU.

The plugin's models as its default builds them (``cnn_large`` on 32 x 32 RGB images, ``cnn_small`` on
16 x 16 thermal images, 10 classes): parameters, and milliseconds per image at batch 1 (one camera
frame) and batch 256 (a backlog), the median of interleaved rounds. Weights do not change the time; the
accuracies to read beside it are in BENCHMARKS.md (sensor section).

    .venv/bin/python benchmarks/sensor_latency.py [--rounds 10]

Prints a table and writes benchmarks/results/sensor_latency.json.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from bench_common import environment, interleaved_seconds, write_result
from rich.console import Console
from rich.table import Table

from kd_sensor.models import build_model
from kdcore.engine import count_parameters

SENSORS = {
    "teacher (cnn_large, old sensor)": ("cnn_large", 3, 32),
    "student (cnn_small, new)": ("cnn_small", 1, 16),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/sensor_latency.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {}
    for batch in (1, 256):
        models, runs = {}, {}
        for name, (arch, channels, size) in SENSORS.items():
            model = build_model(arch, {"in_channels": channels, "num_classes": 10}, {}).eval()
            models[name] = model
            runs[name] = partial(model, torch.rand(batch, channels, size, size))
        with torch.inference_mode():
            seconds = interleaved_seconds(runs, rounds=args.rounds, calls=5)
        for name, model in models.items():
            row = rows.setdefault(name, {"parameters": count_parameters(model)})
            row[f"ms_per_image_batch{batch}"] = 1000 * seconds[name] / batch
    table = Table(title="sensor models at inference, this CPU (median of interleaved rounds)")
    for column in ("model", "parameters", "batch 1: ms / image", "batch 256: ms / image"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(
            name,
            f"{row['parameters']:,}",
            f"{row['ms_per_image_batch1']:.3f}",
            f"{row['ms_per_image_batch256']:.4f}",
        )
    Console().print(table)
    write_result(args.out, {"benchmark": "sensor_latency", **environment(), "models": rows})


if __name__ == "__main__":
    main()
