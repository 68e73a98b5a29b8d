"""Evaluation metrics: plain functions of score tensors, no model involved, each written out in
torch (no scikit-learn) and checked against hand computations in tests/test_eval.py.

- roc_auc, macro_auc_ovr: AUC-ROC by the Mann-Whitney U statistic, ties counted as one half;
- recall_at_k: retrieval Recall@k where several candidates may be correct (identical reports);
- few_shot: a linear probe (multinomial logistic regression, L-BFGS) on frozen features, k
  labelled images per class, scored by macro AUC-ROC on the rest (CLIP's linear-probe protocol);
- bootstrap_weights, weighted_mean, weighted_auc, weighted_macro_auc_ovr, ci95: a percentile
  bootstrap over the test items, for a 95% confidence interval of every metric above.

Depends on torch alone.
"""

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Metrics: plain functions of score tensors, no model involved.


def roc_auc(scores, targets):
    """Binary AUC-ROC: the probability that a random positive scores above a random negative,
    ties counted as one half.

    Computed with the Mann-Whitney U statistic: rank all scores (tied scores share the average of
    the ranks they span), then
        AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N)
    for P positives and N negatives. The average ranks are exactly what makes a tie worth half a
    pair. O(n log n), against O(P N) for counting pairs.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    targets = torch.as_tensor(targets).flatten().bool()
    if scores.shape != targets.shape:
        raise ValueError(f"roc_auc: {scores.numel()} scores but {targets.numel()} targets")
    if not torch.isfinite(scores).all():
        raise ValueError("roc_auc: scores contain NaN or infinity")
    n_pos = int(targets.sum())
    n_neg = targets.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc is undefined with only one class present "
                         f"({n_pos} positives, {n_neg} negatives)")
    # unique() sorts, so group g holds the g-th smallest distinct score; its members occupy the
    # 1-based ranks first .. first + count - 1, whose average is first + (count - 1) / 2.
    _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    counts = counts.double()
    first = torch.cumsum(counts, 0) - counts + 1
    ranks = (first + (counts - 1) / 2)[group]                   # (n,) average ranks
    u = ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0        # pairs a positive wins (+ ties / 2)
    return float(u / (n_pos * n_neg))


def macro_auc_ovr(scores, labels):
    """Macro one-vs-rest AUC-ROC: for each class c, the AUC of column c of scores (n, C) at
    separating images of class c from all others; then the plain mean over classes.

    A class with no image in `labels` has no defined AUC and is left out of the mean (a prompt
    file may name more findings than a given test set contains)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels).long()
    present = [c for c in range(scores.shape[1]) if (labels == c).any()]
    if len(present) < 2:
        raise ValueError(f"macro AUC needs images of at least two classes, got {len(present)}")
    return sum(roc_auc(scores[:, c], labels == c) for c in present) / len(present)


def recall_at_k(similarity, correct, ks=(1, 5, 10)):
    """Recall@k for retrieval: the fraction of queries (rows) for which at least one of the k most
    similar candidates (columns) is a correct match.

    similarity (nq, nc) float; correct (nq, nc) bool. For image-text pairs with repeated reports,
    `correct` is True wherever the candidate's report equals the query's (not just the diagonal).
    Returns {k: recall}; k larger than the number of candidates means all of them."""
    return {k: hit.double().mean().item() for k, hit in recall_hits(similarity, correct, ks).items()}


def recall_hits(similarity, correct, ks=(1, 5, 10)):
    """recall_at_k query by query: {k: (nq,) bool, True where one of the query's k most similar
    candidates is correct}. Recall@k is its mean; the bootstrap resamples it."""
    similarity = torch.as_tensor(similarity)
    correct = torch.as_tensor(correct).bool()
    if similarity.shape != correct.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and correct "
                         f"{tuple(correct.shape)} differ in shape")
    out = {}
    for k in ks:
        top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices   # (nq, k)
        out[k] = correct.gather(1, top).any(dim=1)                           # (nq,)
    return out


# -----------------------------------------------------------------------------
# Few-shot: a linear probe on frozen image features.


def _fit_linear_probe(x, y, num_classes, weight_decay=1e-3, max_iter=200):
    """Multinomial logistic regression, min_W,b  mean CE(x W + b, y) + weight_decay * |W|^2,
    solved with L-BFGS on the full (tiny: k * C rows) training set, as CLIP's linear-probe
    evaluation does with scikit-learn's L-BFGS. The problem is convex, so starting from zero and
    a deterministic solver make the result depend on the data alone. x (n, D), y (n,)."""
    W = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)   # (D, C)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)               # (C,)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W + b, y) + weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def few_shot(image_features, labels, shots=(1, 2, 4, 8, 16), seeds=(0, 1, 2, 3, 4),
             weight_decay=1e-3):
    """For each k in shots and each seed: draw k images per class (torch generator seeded with
    the seed), fit a linear probe on their L2-normalised features, and score macro one-vs-rest
    AUC-ROC of its softmax probabilities on every image not drawn. Returns {str(k): mean AUC over
    seeds}. Each class needs more than k images (at least one left to test on)."""
    return few_shot_auc(few_shot_probes(image_features, labels, shots, seeds, weight_decay))


def few_shot_auc(probes):
    """few_shot's numbers from few_shot_probes' output: {str(k): mean over seeds of the macro AUC
    of each seed's probe on its test images}."""
    return {k: sum(macro_auc_ovr(p["probs"], p["labels"]) for p in runs) / len(runs)
            for k, runs in probes.items()}


def few_shot_probes(image_features, labels, shots=(1, 2, 4, 8, 16), seeds=(0, 1, 2, 3, 4),
                    weight_decay=1e-3):
    """few_shot's probes and what they predict, before any scoring: {str(k): [one dict per seed,
    {"test": (n_test,) indices of the images not drawn, "probs": (n_test, C) the probe's softmax
    probabilities on them, "labels": (n_test,) their classes, relabelled 0..C-1}]}.
    few_shot scores them; evaluate also bootstraps their test images."""
    x = F.normalize(torch.as_tensor(image_features).detach().float().cpu(), dim=-1)   # (n, D)
    # Relabel to 0..C-1 so that a class missing from the labels leaves no empty column.
    _, y = torch.unique(torch.as_tensor(labels).cpu(), return_inverse=True)         # (n,)
    num_classes = int(y.max()) + 1
    members = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    smallest = min(len(m) for m in members)
    results = {}
    for k in shots:
        if k >= smallest:
            raise ValueError(f"{k}-shot needs more than {k} images per class (one left to test "
                             f"on); the smallest class has {smallest}")
        runs = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            train = torch.cat([m[torch.randperm(len(m), generator=g)[:k]] for m in members])
            test = torch.ones(len(y), dtype=torch.bool)
            test[train] = False
            W, b = _fit_linear_probe(x[train], y[train], num_classes, weight_decay)
            probs = torch.softmax(x[test] @ W + b, dim=-1)                          # (n_test, C)
            runs.append({"test": torch.nonzero(test).flatten(), "probs": probs, "labels": y[test]})
        results[str(k)] = runs
    return results


# -----------------------------------------------------------------------------
# Bootstrap confidence intervals: how much a metric would move on another test set of the same size.
#
# The percentile bootstrap (Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13):
# draw R sets of n items with replacement from the n test items, compute the metric on each, and
# take the 2.5th and 97.5th percentiles of the R values as the 95% interval. CheXzero (Tiu et al.,
# Nature Biomedical Engineering 2022) reports its test results so, with R = 1000.
#
# A resample only says how many times each item was drawn: row r of W (R, n) holds those counts,
# summing to n. Every metric here is then a *weighted* statistic of per-item values computed once
# (a hit, a score), so the R resamples cost a few (R, n) tensor operations, not R evaluations; the
# tests check that each equals the metric computed on the resampled items written out.

BOOTSTRAP_RESAMPLES = 1000


def bootstrap_weights(n, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """(resamples, n) float64: row r counts how many times each of n items is drawn in the r-th
    bootstrap resample (n draws with replacement, so every row sums to n: a multinomial). Seeded
    by its own torch.Generator: the same (n, resamples, seed) give the same matrix, and the global
    random state is left alone. Memory: 16 resamples n bytes while drawing (160 MB for 10,000
    items)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"bootstrap_weights needs n >= 1 and resamples >= 1, got {n}, {resamples}")
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (resamples, n), generator=g)                          # (R, n) indices
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, n, dtype=torch.float64))


def weighted_mean(values, W):
    """mean_r = sum_i W[r, i] values[i] / sum_i W[r, i]: a per-item mean (accuracy from the hit
    vector, Recall@k from recall_hits) on each resample. values (n,), W (R, n) -> (R,)."""
    values = torch.as_tensor(values).double().flatten()
    W = torch.as_tensor(W, dtype=torch.float64)
    return (W @ values) / W.sum(1)


def weighted_auc(scores, targets, W):
    """Binary AUC-ROC (ties one half, as roc_auc) on each resample. With w the row of W,
        AUC_r = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) / (sum_pos w_i  sum_neg w_j),
    which is roc_auc of the resampled items written out (an item drawn m times is m items).
    Computed without the P x N pair matrix: group the items by distinct score (sorted), sum each
    resample's negative weight per group, and let every positive win all the negative weight in
    the groups below its own and half of that in its own: O(R n), not O(R P N).
    scores (n,), targets (n,) bool, W (R, n) -> (R,); NaN where a resample has no positive or no
    negative (the AUC is undefined there)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    targets = torch.as_tensor(targets).flatten().bool()
    if scores.shape != targets.shape or W.shape[1] != scores.numel():
        raise ValueError(f"weighted_auc: {scores.numel()} scores, {targets.numel()} targets, "
                         f"weights for {W.shape[1]} items")
    Wt = torch.as_tensor(W, dtype=torch.float64).T.contiguous()   # (n, R)
    return _weighted_auc_items_first(scores, targets, Wt)


def _weighted_auc_items_first(scores, targets, Wt):
    """weighted_auc with the weights transposed, Wt (n, R): an item's R counts are one contiguous
    row, so selecting and summing items is a row operation (several times faster than on columns)."""
    _, group = torch.unique(scores, return_inverse=True)     # group g: the g-th smallest score
    neg = torch.zeros(int(group.max()) + 1, Wt.shape[1], dtype=torch.float64)
    neg.index_add_(0, group[~targets], Wt[~targets])          # (G, R) negative weight per group
    beaten = neg.cumsum(0).sub_(neg, alpha=0.5)               # below the group + half of its own
    w_pos = Wt[targets]                                       # (P, R)
    wins = (w_pos * beaten[group[targets]]).sum(0)            # (R,) sum_pos w_i beaten(g(i))
    pairs = w_pos.sum(0) * neg.sum(0)
    return torch.where(pairs > 0, wins / pairs.clamp_min(1e-300), torch.full_like(wins, float("nan")))


def weighted_macro_auc_ovr(scores, labels, W):
    """macro_auc_ovr on each resample: for each class, weighted_auc of its column against the
    rest, then the mean over the classes present in that resample (a class no resampled item
    belongs to, or that all of them belong to, is left out of that resample's mean, as
    macro_auc_ovr leaves out a class absent from the test set). scores (n, C), labels (n,),
    W (R, n) -> (R,); NaN where fewer than two classes are present."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels).long()
    if scores.shape[0] != labels.numel() or W.shape[1] != labels.numel():
        raise ValueError(f"weighted_macro_auc_ovr: {scores.shape[0]} rows of scores, "
                         f"{labels.numel()} labels, weights for {W.shape[1]} items")
    Wt = torch.as_tensor(W, dtype=torch.float64).T.contiguous()   # (n, R), shared by the classes
    return _weighted_macro_items_first(scores, labels, Wt)


def _weighted_macro_items_first(scores, labels, Wt):
    """weighted_macro_auc_ovr with the weights transposed, Wt (n, R), shared by the classes."""
    aucs = torch.stack([_weighted_auc_items_first(scores[:, c], labels == c, Wt)
                        for c in range(scores.shape[1])])    # (C, R), NaN: absent from resample r
    # A class's AUC is defined when the resample holds it and another class, so the classes with
    # a defined AUC are exactly those present, and there are none when only one class is.
    return torch.nanmean(aucs, dim=0)


def weighted_few_shot(probes, W):
    """few_shot on each resample of the images, the probes held fixed: for each k, the macro AUC
    of every seed's probe on the resampled copies of its own test images, averaged over the seeds.
    probes: few_shot_probes' output on n images; W (R, n) resamples those n images. One W for all
    seeds matters: their test sets are nearly the same images, so a resample must be the same draw
    of images for each of them. A draw per seed would treat the seeds' test noise as independent
    and average part of it away (on 5 x 200 images and 5 seeds, an interval about 30% narrower).
    The images a seed trained on are not in its test set: their weights go unused.
    Returns {str(k): (R,)}."""
    Wt = torch.as_tensor(W, dtype=torch.float64).T.contiguous()   # (n, R)
    out = {}
    for k, runs in probes.items():
        per_seed = [_weighted_macro_items_first(torch.as_tensor(p["probs"], dtype=torch.float64),
                                                p["labels"].long(), Wt[p["test"]]) for p in runs]
        out[k] = torch.stack(per_seed).mean(0)                # NaN if any seed's is undefined
    return out


def ci95(values):
    """The percentile bootstrap's 95% interval: [2.5th, 97.5th percentile] of the R resampled
    values (torch.quantile, linear interpolation), as two floats. Resamples where the metric is
    undefined (NaN) are left out; with none left it raises ValueError."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        raise ValueError("ci95: the metric is undefined on every resample")
    lo, hi = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [lo, hi]


def accuracy_ci95(correct, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """95% bootstrap interval of the mean of a per-item hit vector (accuracy, Recall@k)."""
    correct = torch.as_tensor(correct).flatten()
    return ci95(weighted_mean(correct, bootstrap_weights(correct.numel(), resamples, seed)))


def auc_ci95(scores, targets, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """95% bootstrap interval of roc_auc(scores, targets)."""
    return ci95(weighted_auc(scores, targets, bootstrap_weights(len(targets), resamples, seed)))


def macro_auc_ci95(scores, labels, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """95% bootstrap interval of macro_auc_ovr(scores, labels)."""
    return ci95(weighted_macro_auc_ovr(scores, labels, bootstrap_weights(len(labels), resamples, seed)))
