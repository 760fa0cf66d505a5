"""Transitive soft targets: the max-min closure on hand-made graphs and against a brute-force oracle,
the teacher's logits raised only where a chain of its matches joins a pair, and the plugin's
``kd_soft_targets`` looking them up by pair position."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kd_dedup import kd_soft_targets
from kd_dedup.clustering import cluster_records, transitive_scores
from kd_dedup.data import PairSet
from kd_dedup.encoding import encode_records
from kd_dedup.tables import RecordTable
from kd_dedup.targets import teacher_logits, threshold_margin, transitive_targets


def test_a_pair_joined_by_a_chain_of_matches_takes_the_chains_weakest_link():
    pairs = np.array([[0, 1], [1, 2], [0, 2], [3, 4], [2, 3], [5, 6]])
    scores = np.array([0.9, 0.6, 0.1, 0.8, 0.3, 0.2])
    closed = transitive_scores(7, pairs, scores, 0.5)
    # 0-2 is joined through 0-1-2 (weakest link 0.6); 2-3 and 5-6 join different entities: unchanged
    assert closed.tolist() == [0.9, 0.6, 0.6, 0.8, 0.3, 0.2]
    assert scores.tolist() == [0.9, 0.6, 0.1, 0.8, 0.3, 0.2]  # the input is not modified


def test_the_strongest_chain_wins_and_raises_a_weak_match_too():
    pairs = np.array([[0, 1], [1, 3], [0, 2], [2, 3], [0, 3]])
    scores = np.array([0.9, 0.55, 0.7, 0.8, 0.2])
    closed = transitive_scores(4, pairs, scores, 0.5)
    # 0-3: the chain 0-2-3 (0.7) beats 0-1-3 (0.55); 1-3 (0.55 itself) is joined by 1-0-2-3 at 0.7
    assert closed.tolist() == pytest.approx([0.9, 0.7, 0.7, 0.8, 0.7])
    # at threshold 0.75 only 0-1 and 2-3 link: no pair joins the two
    assert transitive_scores(4, pairs, scores, 0.75).tolist() == scores.tolist()


def test_a_pair_without_a_score_takes_its_chain_and_bad_input_is_refused():
    closed = transitive_scores(3, np.array([[0, 1], [1, 2], [0, 2]]), np.array([0.9, 0.8, np.nan]), 0.5)
    assert closed.tolist() == [0.9, 0.8, 0.8]
    assert transitive_scores(2, np.zeros((0, 2), dtype=np.int64), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="scores must hold one score per pair: 1 scores for 2 pairs"):
        transitive_scores(3, np.array([[0, 1], [1, 2]]), np.array([0.5]), 0.5)
    with pytest.raises(ValueError, match="row 0 pairs record 1 with itself"):
        transitive_scores(3, np.array([[1, 1]]), np.array([0.5]), 0.5)


def brute_force_closure(n: int, pairs: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Each pair's highest level t >= threshold at which the pairs scored >= t connect it, else its own."""
    closed = scores.copy()
    for level in sorted(set(scores[scores >= threshold].tolist())):
        entities = cluster_records(n, pairs, scores, level)
        joined = entities[pairs[:, 0]] == entities[pairs[:, 1]]
        closed[joined] = np.maximum(closed[joined], level)
    return closed


@pytest.mark.parametrize("seed", range(5))
def test_the_closure_agrees_with_a_brute_force_oracle_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    n = 30
    candidates = np.array([(a, b) for a in range(n) for b in range(a + 1, n)])
    pairs = candidates[rng.choice(len(candidates), 80, replace=False)]
    scores = rng.random(80)
    closed = transitive_scores(n, pairs, scores, 0.6)
    assert np.allclose(closed, brute_force_closure(n, pairs, scores, 0.6))
    assert (closed > scores).any()  # the random graphs do have pairs to raise


def pair_set() -> PairSet:
    records = pd.DataFrame({"id": list("abcde"), "name": ["ann", "bea", "cat", "dan", "eve"]})
    table = RecordTable("five", records, ("name",), entity=np.array([0, 0, 0, 1, 0]))
    pairs = np.array([[0, 1], [1, 2], [0, 2], [2, 3], [0, 4], [2, 4]])
    return PairSet(table, encode_records(table.records, ["name"], 6), pairs)


class FixedTeacher(nn.Module):
    """Logits by the pair's first letters: a stand-in teacher that counts its calls."""

    def __init__(self, margins: dict[tuple[int, int], float]) -> None:
        super().__init__()
        self.margins, self.calls = margins, 0

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        keys = [(int(pair[0, 0, 0]), int(pair[1, 0, 0])) for pair in codes]
        margin = torch.tensor([self.margins[key] for key in keys])
        return torch.stack([torch.full_like(margin, 0.5), 0.5 + margin], dim=1)


def teacher_for(pairs: PairSet) -> FixedTeacher:
    first = [int(pairs.codes[i, 0, 0]) for i in range(len(pairs.table))]
    wanted = {(0, 1): 3.0, (1, 2): 3.0, (0, 2): 1.0, (2, 3): -2.0, (0, 4): 2.0, (2, 4): -3.0}
    return FixedTeacher({(first[a], first[b]): m for (a, b), m in wanted.items()})


def test_only_a_non_match_that_the_teachers_matches_join_is_raised():
    pairs = pair_set()
    teacher = teacher_for(pairs)
    logits = teacher_logits(teacher, pairs, torch.device("cpu"), batch=4)
    assert teacher.calls == 2 and logits.shape == (6, 2)  # 6 pairs in batches of 4
    targets = transitive_targets(logits, pairs, threshold=0.5)
    margins = (targets[:, 1] - targets[:, 0]).tolist()
    # c-e (-3) is joined through c-b-a-e, whose weakest link is a-e (2); a-c (1), a match already, keeps
    # its margin although a-b-c (3) is stronger; c-d (-2) is joined by no chain
    assert margins == pytest.approx([3.0, 3.0, 1.0, -2.0, 2.0, 2.0])
    assert torch.equal(targets[:, 0], logits[:, 0]) and torch.equal(targets[:5], logits[:5])
    assert (logits[5, 1] - logits[5, 0]).item() == pytest.approx(-3.0)  # the input is not modified
    # at threshold 0.9 (margin log 9 = 2.2) only a-b and b-c link: a-c, now a non-match, is raised to
    # a-b-c's 3, and c-e stays
    strict = transitive_targets(logits, pairs, threshold=0.9)
    assert (strict[:, 1] - strict[:, 0]).tolist() == pytest.approx([3.0, 3.0, 3.0, -2.0, 2.0, -3.0])
    assert threshold_margin(0.9) == pytest.approx(math.log(9))
    with pytest.raises(ValueError, match=r"options\.threshold must be a match probability strictly between"):
        transitive_targets(logits, pairs, threshold=1.0)


def test_kd_soft_targets_looks_the_targets_up_by_pair_position_once_per_teacher():
    pairs = pair_set()
    teacher = teacher_for(pairs)
    options = {"transitive_targets": True, "threshold": 0.5}
    run = SimpleNamespace(
        config={"options": options},
        variant="",
        teacher_label="teacher",
        teacher=teacher,
        plugin_state={},
        data=SimpleNamespace(train=pairs),
        device=torch.device("cpu"),
    )
    batch = (None, None, torch.tensor([5, 0]))
    first = kd_soft_targets(run=run, inputs=None, batch=batch)
    assert (first[:, 1] - first[:, 0]).tolist() == pytest.approx([2.0, 3.0])
    calls = teacher.calls
    again = kd_soft_targets(run=run, inputs=None, batch=(None, None, torch.tensor([3])))
    assert teacher.calls == calls  # computed once for this teacher
    assert (again[:, 1] - again[:, 0]).tolist() == pytest.approx([-2.0])
    run.config = {"options": {**options, "transitive_targets": False}}
    assert kd_soft_targets(run=run, inputs=None, batch=batch) is None  # kdcore's default then
