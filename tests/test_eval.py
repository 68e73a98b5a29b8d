"""Tests for eval.py: the metrics against hand-computed cases, the protocols on inputs whose answer
is known, and the command line end to end on a tiny checkpoint."""

import itertools
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as ev  # noqa: E402  (the repository's eval.py, not the builtin)


# -----------------------------------------------------------------------------
# roc_auc


@pytest.mark.parametrize("scores, targets, expected", [
    # Ranks 1, 3, 2, 4; positives hold ranks 2 and 4: (6 - 3) / (2 * 2) = 0.75. By pairs: the
    # positive 0.35 beats 0.1 but loses to 0.4; the positive 0.8 beats both: 3 of 4 pairs.
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),            # all tied: every pair counts one half
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),            # perfect
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),            # reversed
    # One tie across classes (0.5 vs 0.5) among 2 x 3 = 6 pairs: positives 0.5 and 0.9 against
    # negatives 0.1, 0.5, 0.7 win 1 + 0.5 + 0 and 1 + 1 + 1 = 4.5 of 6.
    ([0.1, 0.5, 0.7, 0.5, 0.9], [0, 0, 0, 1, 1], 0.75),
])
def test_roc_auc_hand_cases(scores, targets, expected):
    assert ev.roc_auc(torch.tensor(scores), torch.tensor(targets)) == pytest.approx(expected)


def test_roc_auc_matches_pairwise_count_with_ties():
    # Scores drawn from only 6 values, so ties within and across classes are everywhere.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randint(0, 6, (200,), generator=g).float()
        targets = torch.rand(200, generator=g) < 0.3
        pos, neg = scores[targets], scores[~targets]
        wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
        assert ev.roc_auc(scores, targets) == pytest.approx(wins.mean().item(), abs=1e-12)


def test_roc_auc_one_class_is_an_error():
    with pytest.raises(ValueError, match="one class"):
        ev.roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_macro_auc_ovr_hand_case():
    # Class 0: column 0 ranks both class-0 images above the rest: 1.0.
    # Class 1: column 1 is [0.1, 0.6, 0.5, 0.6]: positive 0.5 loses to the negative 0.6 and beats
    # 0.1 (1 of 2); positive 0.6 ties 0.6 and beats 0.1 (1.5 of 2): 2.5 / 4 = 0.625.
    # Class 2 has no image and is left out: macro = (1.0 + 0.625) / 2.
    scores = torch.tensor([[0.9, 0.1, 0.0],
                           [0.8, 0.6, 0.0],
                           [0.2, 0.5, 0.3],
                           [0.1, 0.6, 0.3]])
    labels = torch.tensor([0, 0, 1, 1])
    assert ev.macro_auc_ovr(scores, labels) == pytest.approx((1.0 + 0.625) / 2)


# -----------------------------------------------------------------------------
# recall_at_k


def test_recall_at_k_hand_cases():
    sim = torch.tensor([[0.9, 0.1, 0.5],     # the correct candidate 0 is first
                        [0.9, 0.1, 0.5],     # the correct candidate 1 is last (rank 3)
                        [0.2, 0.9, 0.5]])    # the correct candidate 2 is second
    correct = torch.eye(3, dtype=torch.bool)
    r = ev.recall_at_k(sim, correct, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


def test_recall_at_k_counts_identical_reports_as_correct():
    # Queries 0 and 1 have the same report. Query 1's top candidate is report 0, which is the
    # same text as its own: that is a hit. Query 2's top candidate is 0, a different report: a miss.
    reports = torch.tensor([7, 7, 3])   # report ids; equal ids mean identical report text
    sim = torch.tensor([[0.9, 0.1, 0.0],
                        [0.9, 0.1, 0.0],
                        [0.9, 0.0, 0.5]])
    correct = reports[:, None] == reports[None, :]
    assert ev.recall_at_k(sim, correct, ks=(1,))[1] == pytest.approx(2 / 3)
    # With only the diagonal counted correct, query 1 would be a miss.
    assert ev.recall_at_k(sim, torch.eye(3, dtype=torch.bool), ks=(1,))[1] == pytest.approx(1 / 3)


# -----------------------------------------------------------------------------
# few_shot


def test_few_shot_separable_features_give_high_auc():
    # Five well-separated clusters: even one labelled image per class finds the right direction.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g)
    labels = torch.arange(5).repeat_interleave(30)                              # (150,)
    features = centres[labels] + 0.3 * torch.randn(150, 32, generator=g)        # (150, 32)
    result = ev.few_shot(features, labels, seeds=(0, 1))
    assert list(result) == ["1", "2", "4", "8", "16"]
    assert all(auc > 0.99 for auc in result.values()), result


def test_few_shot_random_labels_are_chance():
    # Labels independent of the features: no probe can do better than chance on held-out images.
    g = torch.Generator().manual_seed(1)
    features = torch.randn(150, 32, generator=g)
    labels = torch.randint(0, 5, (150,), generator=g)
    result = ev.few_shot(features, labels, shots=(1, 4, 16), seeds=(0, 1, 2))
    assert all(auc < 0.7 for auc in result.values()), result


def test_few_shot_refuses_k_without_test_images():
    labels = torch.arange(3).repeat_interleave(4)
    with pytest.raises(ValueError, match="4-shot"):
        ev.few_shot(torch.randn(12, 8), labels, shots=(4,), seeds=(0,))
