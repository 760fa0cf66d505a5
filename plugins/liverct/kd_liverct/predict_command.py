"""``kd predict``: the command line of :mod:`kd_liverct.predict`, which it imports only when it runs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click


def register_command(cli: click.Group) -> None:
    """Add ``kd predict`` to ``cli``."""

    @cli.command("predict")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option(
        "--input",
        "-i",
        "inputs",
        multiple=True,
        required=True,
        type=click.Path(exists=True),
        help="A .nii/.nii.gz file or a directory of them (an MSD folder: imagesTs/, else imagesTr/). "
        "Repeatable.",
    )
    @click.option(
        "--output", "-o", "output", required=True, type=click.Path(), help="Directory for the masks."
    )
    @click.option(
        "--checkpoint", default="checkpoints/best.pt", show_default=True, help="Relative to RUN_DIR."
    )
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
    @click.option(
        "--overlap", default=0.25, show_default=True, type=float, help="Overlap of the sliding windows."
    )
    @click.option("--overwrite", is_flag=True, help="Replace masks that already exist.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
    def predict(run_dir, inputs, output, checkpoint, device, overlap, overwrite, as_json) -> None:
        """Segment liver and tumour in CT volumes with a liverct run; write uint8 masks to OUTPUT.

        Each mask, OUTPUT/<name>_seg.nii.gz (.nii for a .nii input), lies on its input's voxel grid
        with the input's affine and header. Inputs are never overwritten.
        """
        from kd_liverct.predict import PredictedCase, predict_paths  # torch and MONAI only now

        cases: list[PredictedCase] = []

        def report(case: PredictedCase) -> None:
            cases.append(case)
            if not as_json:
                shape = "x".join(str(n) for n in case.shape)
                volumes = "  ".join(f"{k} {v:.1f} ml" for k, v in case.volumes_ml.items())
                click.echo(f"{case.name}  {shape}  {case.seconds:.2f} s  {volumes}  -> {case.output}")

        started = time.perf_counter()
        predict_paths(run_dir, inputs, output, checkpoint, device, overwrite, overlap=overlap, on_case=report)
        total = time.perf_counter() - started
        if as_json:
            record = {
                "run_dir": str(Path(run_dir).absolute()),
                "checkpoint": str(checkpoint),
                "output": str(Path(output).absolute()),
                "seconds": total,
                "cases": [
                    {**asdict(c), "input": str(c.input), "output": str(c.output), "shape": list(c.shape)}
                    for c in cases
                ],
            }
            click.echo(json.dumps(record))
            return
        click.echo(f"wrote {len(cases)} mask(s) to {Path(output).absolute()} in {total:.1f} s")
