"""Tests for evaluation/metrics.py against hand-computed cases: AUC-ROC, Recall@k, the few-shot
linear probe, and the bootstrap's weighted statistics and intervals."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation import metrics  # noqa: E402


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
    assert metrics.roc_auc(torch.tensor(scores), torch.tensor(targets)) == pytest.approx(expected)


def test_roc_auc_matches_pairwise_count_with_ties():
    # Scores drawn from only 6 values, so ties within and across classes are everywhere.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randint(0, 6, (200,), generator=g).float()
        targets = torch.rand(200, generator=g) < 0.3
        pos, neg = scores[targets], scores[~targets]
        wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
        assert metrics.roc_auc(scores, targets) == pytest.approx(wins.mean().item(), abs=1e-12)


def test_roc_auc_one_class_is_an_error():
    with pytest.raises(ValueError, match="one class"):
        metrics.roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


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
    assert metrics.macro_auc_ovr(scores, labels) == pytest.approx((1.0 + 0.625) / 2)


# -----------------------------------------------------------------------------
# recall_at_k


def test_recall_at_k_hand_cases():
    sim = torch.tensor([[0.9, 0.1, 0.5],     # the correct candidate 0 is first
                        [0.9, 0.1, 0.5],     # the correct candidate 1 is last (rank 3)
                        [0.2, 0.9, 0.5]])    # the correct candidate 2 is second
    correct = torch.eye(3, dtype=torch.bool)
    r = metrics.recall_at_k(sim, correct, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


def test_recall_at_k_counts_identical_reports_as_correct():
    # Queries 0 and 1 have the same report. Query 1's top candidate is report 0, which is the
    # same text as its own: that is a hit. Query 2's top candidate is 0, a different report: a miss.
    reports = torch.tensor([7, 7, 3])   # report ids; equal ids mean identical report text
    sim = torch.tensor([[0.9, 0.1, 0.0],
                        [0.9, 0.1, 0.0],
                        [0.9, 0.0, 0.5]])
    correct = reports[:, None] == reports[None, :]
    assert metrics.recall_at_k(sim, correct, ks=(1,))[1] == pytest.approx(2 / 3)
    # With only the diagonal counted correct, query 1 would be a miss.
    assert metrics.recall_at_k(sim, torch.eye(3, dtype=torch.bool), ks=(1,))[1] == pytest.approx(1 / 3)


# -----------------------------------------------------------------------------
# few_shot


def test_few_shot_separable_features_give_high_auc():
    # Five well-separated clusters: even one labelled image per class finds the right direction.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g)
    labels = torch.arange(5).repeat_interleave(30)                              # (150,)
    features = centres[labels] + 0.3 * torch.randn(150, 32, generator=g)        # (150, 32)
    result = metrics.few_shot(features, labels, seeds=(0, 1))
    assert list(result) == ["1", "2", "4", "8", "16"]
    assert all(auc > 0.99 for auc in result.values()), result


def test_few_shot_random_labels_are_chance():
    # Labels independent of the features: no probe can do better than chance on held-out images.
    g = torch.Generator().manual_seed(1)
    features = torch.randn(150, 32, generator=g)
    labels = torch.randint(0, 5, (150,), generator=g)
    result = metrics.few_shot(features, labels, shots=(1, 4, 16), seeds=(0, 1, 2))
    assert all(auc < 0.7 for auc in result.values()), result


def test_few_shot_refuses_k_without_test_images():
    labels = torch.arange(3).repeat_interleave(4)
    with pytest.raises(ValueError, match="4-shot"):
        metrics.few_shot(torch.randn(12, 8), labels, shots=(4,), seeds=(0,))



def test_few_shot_probes_are_what_few_shot_scores():
    g = torch.Generator().manual_seed(2)
    features, labels = torch.randn(30, 8, generator=g), torch.arange(3).repeat(10)
    probes = metrics.few_shot_probes(features, labels, shots=(1, 2), seeds=(0, 1))
    assert list(probes) == ["1", "2"] and [len(runs) for runs in probes.values()] == [2, 2]
    for k, runs in probes.items():
        for p in runs:
            # the test images are those not drawn: k per class left out, labels theirs
            assert len(p["test"]) == 30 - 3 * int(k) and p["probs"].shape == (30 - 3 * int(k), 3)
            assert torch.equal(p["labels"], labels[p["test"]])
    expected = {k: sum(metrics.macro_auc_ovr(p["probs"], p["labels"]) for p in runs) / 2
                for k, runs in probes.items()}
    assert metrics.few_shot(features, labels, shots=(1, 2), seeds=(0, 1)) == expected


# -----------------------------------------------------------------------------
# The bootstrap: weighted statistics of fixed per-item values against the resampled items
# written out (an item drawn m times repeated m times)


def written_out(W_row):
    """The indices of one resample: item i repeated W_row[i] times."""
    return torch.repeat_interleave(torch.arange(len(W_row)), W_row.long())


def or_nan(fn, *args):
    try:
        return fn(*args)
    except ValueError:   # one class only: the metric is undefined on this resample
        return float("nan")


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_bootstrap_weights_are_seeded_multinomial_counts():
    W = metrics.bootstrap_weights(7, resamples=500, seed=3)
    assert W.shape == (500, 7) and W.dtype == torch.float64
    assert torch.equal(W, W.round()) and (W >= 0).all() and (W.sum(1) == 7).all()
    # each item is drawn n * (1/n) = once per resample on average
    assert W.mean(0) == pytest.approx(torch.ones(7, dtype=torch.float64), abs=0.1)
    assert torch.equal(W, metrics.bootstrap_weights(7, resamples=500, seed=3))
    assert not torch.equal(W, metrics.bootstrap_weights(7, resamples=500, seed=4))
    state = torch.get_rng_state()
    metrics.bootstrap_weights(7, seed=0)
    assert torch.equal(state, torch.get_rng_state())   # its own generator: global state untouched


def test_ci95_is_the_2_5th_and_97_5th_percentile_without_undefined_resamples():
    values = torch.arange(1001, dtype=torch.float64)   # percentile p is exactly 10 p
    assert metrics.ci95(values) == [25.0, 975.0]
    assert metrics.ci95(torch.cat([values, torch.full((7,), float("nan"))])) == [25.0, 975.0]
    with pytest.raises(ValueError, match="undefined"):
        metrics.ci95(torch.full((3,), float("nan")))


def test_weighted_statistics_equal_the_metrics_on_resampled_items_written_out():
    # 5 items, scores from 3 values (ties within and across classes), hand-made and random
    # resamples, including ones that leave out a class entirely (undefined: NaN).
    g = torch.Generator().manual_seed(0)
    hand = torch.tensor([[1, 1, 1, 1, 1],       # the original set
                         [2, 0, 1, 0, 2],
                         [0, 3, 0, 2, 0],
                         [5, 0, 0, 0, 0]], dtype=torch.float64)
    for trial in range(6):
        scores = torch.randint(0, 3, (5,), generator=g).double()
        targets = torch.tensor([1, 0, 1, 0, 0]).bool()[torch.randperm(5, generator=g)]
        probs = torch.softmax(torch.randint(0, 3, (5, 3), generator=g).double(), dim=1)
        labels = torch.tensor([0, 1, 2, 0, 1])[torch.randperm(5, generator=g)]
        hits = torch.rand(5, generator=g) < 0.6
        W = torch.cat([hand, metrics.bootstrap_weights(5, resamples=40, seed=trial)])
        auc = metrics.weighted_auc(scores, targets, W)
        macro = metrics.weighted_macro_auc_ovr(probs, labels, W)
        mean = metrics.weighted_mean(hits, W)
        for r in range(len(W)):
            idx = written_out(W[r])
            assert same(auc[r].item(), or_nan(metrics.roc_auc, scores[idx], targets[idx])), (trial, r)
            assert same(macro[r].item(), or_nan(metrics.macro_auc_ovr, probs[idx], labels[idx])), (trial, r)
            assert mean[r].item() == pytest.approx(hits[idx].double().mean().item(), abs=1e-12)
        # and the pair-matrix formula: AUC_r = w_pos C w_neg / (sum w_pos sum w_neg)
        pos, neg = scores[targets], scores[~targets]
        C = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
        Wp, Wn = W[:, targets], W[:, ~targets]
        direct = ((Wp @ C) * Wn).sum(1) / (Wp.sum(1) * Wn.sum(1))
        torch.testing.assert_close(auc, direct, equal_nan=True)
    assert math.isnan(metrics.weighted_auc(scores, targets, hand[3:])[0])   # item 0 alone


def test_weighted_few_shot_resamples_the_images_once_for_every_probe():
    """Per resample: each seed's probe scored on the resampled copies of its own test images (the
    same draw of images for every seed), then the mean over seeds. Nothing refit."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat(4)                                       # 12 images
    features = torch.randn(3, 6, generator=g)[labels] + torch.randn(12, 6, generator=g)
    probes = metrics.few_shot_probes(features, labels, shots=(1, 2), seeds=(0, 1, 2))
    W = metrics.bootstrap_weights(12, resamples=30, seed=5)
    resampled = metrics.weighted_few_shot(probes, W)
    assert list(resampled) == ["1", "2"]
    for k, runs in probes.items():
        for r in range(len(W)):
            idx = written_out(W[r])
            per_seed = []
            for p in runs:   # the resample's copies of this seed's test images, in its own order
                position = {int(i): j for j, i in enumerate(p["test"])}
                keep = torch.tensor([position[int(i)] for i in idx if int(i) in position], dtype=torch.long)
                per_seed.append(or_nan(metrics.macro_auc_ovr, p["probs"][keep], p["labels"][keep]))
            assert same(resampled[k][r].item(), sum(per_seed) / len(per_seed)), (k, r)


def test_constant_predictor_has_an_interval_of_zero_width():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (300,), generator=g)
    # all scores equal: every pair is a tie, worth one half, on every resample
    assert metrics.auc_ci95(torch.full((300,), 0.3), labels == 0) == [0.5, 0.5]
    assert metrics.macro_auc_ci95(torch.full((300, 4), 0.25), labels) == [0.5, 0.5]
    # always right: accuracy 1 on every resample
    assert metrics.accuracy_ci95(torch.ones(300, dtype=torch.bool)) == [1.0, 1.0]
    # and a predictor that is not constant has a real interval
    lo, hi = metrics.auc_ci95(torch.rand(300, generator=g), labels == 0)
    assert hi - lo > 0.05


def test_accuracy_interval_matches_the_normal_approximation():
    """900 of 1000 right: the bootstrap interval of the mean is about p +- 1.96 sqrt(p (1 - p) / n)
    = 0.9 +- 0.0186. Within 0.003 (the Monte Carlo error of a percentile of 1000 resamples is about
    0.001), but a bootstrap that drew n/2 items, or the interval of the standard deviation, would
    be off by much more."""
    hits = torch.zeros(1000, dtype=torch.bool)
    hits[:900] = True
    half = 1.96 * math.sqrt(0.9 * 0.1 / 1000)
    for seed in (0, 1):
        lo, hi = metrics.accuracy_ci95(hits, seed=seed)
        assert lo == pytest.approx(0.9 - half, abs=0.003) and hi == pytest.approx(0.9 + half, abs=0.003)
    assert metrics.accuracy_ci95(hits, seed=0) == metrics.accuracy_ci95(hits, seed=0)
    assert metrics.accuracy_ci95(hits, seed=0) != metrics.accuracy_ci95(hits, seed=1)
