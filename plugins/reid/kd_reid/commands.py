"""``kd reid search`` and ``kd reid derive``: the search and the derivation on their own.

``kd reid search`` trains the teacher and the ``search`` variant only (no derived student, no baseline)
and writes ``genotype_search.json`` in the run directory. ``kd reid derive RUN_DIR`` derives a genotype
again from any saved supernet checkpoint of a run (the last epoch by default, or ``--checkpoint``).
Train a genotype file with ``kd train --plugin reid --set options.genotype=PATH --variant kdas``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


def register_commands(cli: click.Group) -> None:
    """Add the ``reid`` command group to ``kd``."""
    cli.add_command(reid)


@click.group()
def reid() -> None:
    """KDAS-ReID: architecture search and derivation on their own."""


@reid.command("search")
@click.option("--data", help="Market-1501 / DukeMTMC-reID / MSMT17 folder (default: the synthetic set).")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--out", "out_dir", help="Directory that holds run directories (default: runs).")
@click.option("--device", help="auto, cpu, cuda, ...")
def search_command(data, sets, out_dir, device) -> None:
    """Train the teacher and search the cells with KD; write genotype_search.json in the run directory."""
    from rich.console import Console

    from kd_reid import PERSON
    from kd_reid.search import genotype_path
    from kdcore.config import resolve
    from kdcore.engine import fit

    overrides: dict = {"plugin": "reid", "task": PERSON.name, "distill": {"baseline": False}}
    if data is not None:
        overrides["data"] = {"path": os.path.abspath(data)}
    if out_dir is not None:
        overrides["out_dir"] = out_dir
    if device is not None:
        overrides["device"] = device
    config = resolve(PERSON.defaults, sets=sets, overrides=overrides)
    config["variants"] = {"search": config["variants"]["search"]}
    config["primary_variant"] = "search"
    result = fit(config, console=Console(soft_wrap=True))
    click.echo(f"genotype: {genotype_path(result.run_dir, 'search')}")


@reid.command("derive")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--checkpoint",
    default="checkpoints/search.student_last.pt",
    show_default=True,
    help="A supernet checkpoint, relative to RUN_DIR.",
)
@click.option(
    "--output", type=click.Path(dir_okay=False), help="Write the genotype here (and a PNG beside it)."
)
def derive_command(run_dir, checkpoint, output) -> None:
    """Derive the discrete cells from a search checkpoint; print the genotype as JSON."""
    from kd_reid.drawing import draw_genotype
    from kd_reid.models import build_model
    from kdcore.checkpoint import load_checkpoint
    from kdcore.config import read_toml, variant_configs

    run_path = Path(run_dir)
    path = run_path / checkpoint
    if not path.is_file():
        raise click.ClickException(
            f"{path} does not exist; pass --checkpoint with a supernet checkpoint of the run"
        )
    state = load_checkpoint(path)
    if state.get("arch") != "kdas_search":
        raise click.ClickException(
            f"{path} holds a {state.get('arch')!r} model, not the search supernet kdas_search"
        )
    variant = str(state.get("stage", "")).partition("/")[0]
    configs = dict(variant_configs(read_toml(run_path / "config.toml")))
    model = build_model("kdas_search", state["data_info"], configs.get(variant, next(iter(configs.values()))))
    model.load_state_dict(state["model"])
    genotype = model.derive()
    text = json.dumps(genotype.to_dict(), indent=2)
    if output is None:
        click.echo(text)
        return
    genotype.save(output)
    picture = draw_genotype(genotype, Path(output).with_suffix(".png"), title=f"derived from {path.name}")
    click.echo(f"genotype: {output}\npicture: {picture}")
