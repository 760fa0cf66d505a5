"""``kd dedup apply``: match and cluster a new table (or pair of tables) with a trained matcher.

Steps: read the input as :func:`kd_dedup.tables.load_table` does (a CSV/Parquet file to deduplicate, a
folder with ``a.*`` and ``b.*`` to link, or a FEBRL name); propose candidate pairs with the run's
blocking passes plus each record's ``options.knn`` nearest neighbours in the matcher's embedding space
(what a key cannot catch, a typo in every blocking key, the embedding usually can); score them; cluster
the pairs at or above the threshold into entities (connected components).

Writes ``--output`` (every input record, in input order, with its ``entity_id``; for linkage a
``table`` column says ``a`` or ``b``) and ``--pairs`` (the matched pairs with their scores, best
first). Both are written atomically, never over an input file, and an existing file only with
``--overwrite``. When the input carries ground truth (a ``pairs.csv``, ``--entity-column``), the
pairwise and cluster metrics are printed too.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def dedup() -> None:
    """Entity matching with a trained dedup run."""


@dedup.command("apply")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_path",
    required=True,
    help="A table (CSV/Parquet), a folder with a.* and b.*, or a FEBRL name.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Records with entity ids (CSV).",
)
@click.option(
    "--pairs",
    "pairs_output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Matched pairs with scores (CSV).",
)
@click.option("--checkpoint", default="checkpoints/best.pt", show_default=True, help="Relative to RUN_DIR.")
@click.option("--threshold", type=float, help="Match probability for a match (default: the run's).")
@click.option("--id-column", help="The id column of the input (default: the run's).")
@click.option("--entity-column", default="", help="A ground-truth entity column, to print metrics.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (never an input).")
@click.option("--device", default="auto", show_default=True)
def apply_command(**options) -> None:
    """Match and cluster the records of INPUT with the matcher of RUN_DIR."""
    from kd_dedup.apply import apply_run  # torch and pandas only when the command runs

    apply_run(**options)
