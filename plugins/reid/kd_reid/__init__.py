"""kd-reid: KDAS-ReID, knowledge-distilled architecture search for person re-identification.

Registers the task ``reid/person`` with kdcore (entry point ``reid`` in the group ``kd``), the KD loss
``reid_kl``, the hooks that drive the architecture search (:mod:`kd_reid.search`) and the commands
``kd reid search`` / ``kd reid derive``. Data: a Market-1501, DukeMTMC-reID or MSMT17 folder with
``--data PATH``; without one, a synthetic pedestrian set in the Market-1501 layout
(:mod:`kd_reid.synthetic`) is written once under ``$KD_DATA_HOME`` (default ``~/.cache/kd``) and read
back through the same loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdcore import Task, TaskData, data_home, hookimpl, lazy

__version__ = "0.1.0"

#: The networks :func:`kd_reid.models.build_model` builds (named here: loading the plugin imports no torch).
ARCHITECTURES = ("resnet50", "resnet18", "kdas_search", "kdas")

#: Anneal-to-one: T falls from 4 to 1 over the stage (KDAS-ReID's dynamic temperature) along a half
#: cosine: slowly at first, fastest mid-stage, slowly into 1. The paper does not give its rule; of
#: kdcore's three shapes, cosine had the best mean mAP and the smallest spread over 3 seeds, linear the
#: worst (BENCHMARKS.md, reid).
ANNEAL = {"name": "anneal_to_one", "start": 4.0, "end_fraction": 1.0, "shape": "cosine"}

#: The comparison of the issue in one run: the teacher trains once; ``search`` searches the cells with
#: the KD loss in its objective; ``kdas`` trains the derived network from scratch with anneal-to-one KD
#: (the run's primary student); ``kdas_const_t`` trains it with a constant temperature; the no-KD
#: baseline trains the same derived network last. ``kd train --plugin reid --variant search`` searches only.
VARIANTS: dict[str, Any] = {
    "search": {
        "student": {"arch": "kdas_search", "epochs": 4, "lr": 3e-3},
        "options": {"search": True},
        "distill": {"hints": []},  # the paper's search objective: KD on the soft targets alone
    },
    "kdas": {},
    "kdas_const_t": {"distill": {"temperature": {"name": "constant", "value": 4.0}}},
}

#: Relational KD on the retrieval embedding (the BNNeck's output, which test-time retrieval compares):
#: kdcore's similarity-preserving loss (Tung & Mori 2019) makes the student's batch similarity matrix
#: the teacher's. Re-ID scores identities never trained on, so how the teacher arranges images matters
#: more than its logits over the training identities: with a 0.662-mAP teacher the same student went
#: from 0.435 mAP (logits KD alone) to 0.532 at weight 200 and 0.542 at 1000 (BENCHMARKS.md, reid). The
#: lower weight keeps the term beside the others (about 5-10 against 2-4) rather than above them, which
#: a weak teacher would otherwise impose on its student.
EMBEDDING_HINT = {"student": "head.neck", "teacher": "head.neck", "loss": "similarity", "weight": 200.0}

#: The CPU default, about 15 minutes on 2 cores (BENCHMARKS.md measures it over 3 seeds): a ResNet-18
#: teacher, a 4-epoch search of 3 cells, 5-cell students of 20 epochs, 64 x 32 crops.
DEFAULTS: dict[str, Any] = {
    "teacher": {"arch": "resnet18", "epochs": 12, "lr": 1e-3, "weight_decay": 5e-4},
    "student": {"arch": "kdas", "epochs": 20, "lr": 3e-3, "weight_decay": 5e-4},
    "data": {"batch_size": 32, "eval_batch_size": 128},
    "distill": {
        "loss": "reid_kl",
        "temperature": ANNEAL,
        "alpha": {"name": "constant", "value": 0.5},
        "hints": [EMBEDDING_HINT],
    },
    "train": {"log_every": 10, "eval_every": 4},
    "variants": VARIANTS,
    "primary_variant": "kdas",
    "options": {
        "height": 64,
        "width": 32,
        "instances": 4,  # K images per identity in a batch; P = data.batch_size // K
        "erasing": 0.5,
        "distance": "euclidean",
        "rerank": False,
        "search": False,  # the search variant turns it on
        "arch_lr": 3e-3,
        "genotype": "search",  # the search variant's result, or a genotype .json file
        "channels": 24,  # of the derived network's first cells (5 % of ResNet-18's parameters)
        "search_channels": 8,  # of the supernet's: a narrow proxy, as DARTS searches
        "layers": 5,  # cells of the derived network
        "search_layers": 3,  # cells of the supernet
        "steps": 4,
        "embedding": 256,
        "ranked_queries": 4,  # queries drawn with their top matches in report/ranked/ per stage; 0: none
        "synthetic_train_ids": 120,
        "synthetic_test_ids": 100,
    },
}


def synthetic_root(options: Mapping[str, Any]) -> Path:
    """The synthetic Market-1501-layout set for ``options``, written on first use (atomically)."""
    from kd_reid.synthetic import SYNTHETIC_VERSION, write_synthetic_market

    train_ids, test_ids = int(options["synthetic_train_ids"]), int(options["synthetic_test_ids"])
    root = data_home() / "reid" / f"synthetic-v{SYNTHETIC_VERSION}-{train_ids}-{test_ids}-seed0"
    return write_synthetic_market(root, num_train_ids=train_ids, num_test_ids=test_ids, seed=0)


def build_data(config: Mapping[str, Any]) -> TaskData:
    """``--data PATH`` (Market-1501, DukeMTMC-reID, MSMT17) or, without one, the synthetic set."""
    from kd_reid.data import ReIDEvalSet, ReIDTrainSet, batch_sampler_for, decode_all, train_transform
    from kd_reid.market import load_reid_folder

    options = config["options"]
    splits = load_reid_folder(config["data"]["path"] or synthetic_root(options))
    height, width = int(options["height"]), int(options["width"])
    train = ReIDTrainSet(
        splits.train,
        decode_all(splits.train, height, width),
        train_transform(height, width, float(options["erasing"])),
    )
    val = ReIDEvalSet(splits.query, splits.gallery, decode_all(splits.query + splits.gallery, height, width))
    info = {
        "num_classes": splits.num_train_ids,
        "in_channels": 3,
        "height": height,
        "width": width,
        "layout": splits.layout,
    }
    return TaskData(train=train, val=val, info=info, train_batch_sampler=batch_sampler_for(train.labels))


PERSON = Task(
    name="person",
    description="person re-ID (Market-1501 / DukeMTMC-reID / MSMT17; synthetic default), KDAS-ReID",
    build_data=build_data,
    build_model=lazy("kd_reid.models:build_model"),  # torch and torchvision when a run starts
    architectures=ARCHITECTURES,
    defaults=DEFAULTS,
    evaluate=lazy("kd_reid.evaluation:evaluate_reid"),
    main_metric="mAP",
    supervised_loss=lazy("kd_reid.losses:reid_loss"),
)


@hookimpl
def kd_register_tasks(register):
    """Register the ``person`` task."""
    register(PERSON)


@hookimpl
def kd_register_losses(register):
    """Register ``reid_kl``: kdcore's soft-target KL on the identity logits of re-ID outputs."""
    from kd_reid.losses import reid_kl

    register("reid_kl", reid_kl)


@hookimpl
def kd_fit_start(run):
    """Set up the architecture step when a search stage starts."""
    from kd_reid import search

    search.start(run)


@hookimpl
def kd_epoch_start(run, epoch):
    """Restart the held-out batches of a search at each epoch (resumable at epoch boundaries)."""
    from kd_reid import search

    search.new_epoch(run)


@hookimpl
def kd_step_end(run, step, losses):
    """In a search stage, one architecture step after each weight step."""
    from kd_reid import search

    search.architecture_step(run)


@hookimpl
def kd_epoch_end(run, epoch, metrics):
    """Log the architecture weights' entropy with each validation record of a search."""
    from kd_reid import search

    search.describe(run, metrics)


@hookimpl
def kd_fit_end(run, summary):
    """Derive, save, draw and publish a search's genotype; draw the stage's ranked lists; put the
    model's latency per image (batch 1, the run's device) in the stage summary."""
    from kd_reid import search
    from kd_reid.evaluation import draw_stage_ranked_lists, latency_ms

    search.finish(run, summary)
    draw_stage_ranked_lists(run, summary)
    options = run.config["options"]
    summary["ms_per_image"] = latency_ms(
        run.student, int(options["height"]), int(options["width"]), run.device
    )


@hookimpl
def kd_state_dict(run):
    """The search's architecture optimiser and held-out generator (for ``--resume``)."""
    from kd_reid import search

    state = search.state_dict(run)
    return None if state is None else {"reid": {"search": state}}


@hookimpl
def kd_load_state_dict(run, state):
    """Restore what ``kd_state_dict`` saved, after ``kd_fit_start`` rebuilt the search state."""
    from kd_reid import search

    saved = state.get("reid", {}).get("search")
    if saved is not None:
        search.load_state_dict(run, saved)


@hookimpl
def kd_register_commands(cli):
    """Add ``kd reid search`` and ``kd reid derive``."""
    from kd_reid.commands import register_commands

    register_commands(cli)
