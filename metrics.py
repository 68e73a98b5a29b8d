"""Evaluation metrics: plain functions of score tensors, no model involved, each written out in
torch (no scikit-learn) and checked against hand computations in tests/test_eval.py.

- roc_auc, macro_auc_ovr: AUC-ROC by the Mann-Whitney U statistic, ties counted as one half;
- recall_at_k: retrieval Recall@k where several candidates may be correct (identical reports);
- few_shot: a linear probe (multinomial logistic regression, L-BFGS) on frozen features, k
  labelled images per class, scored by macro AUC-ROC on the rest (CLIP's linear-probe protocol).

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
    similarity = torch.as_tensor(similarity)
    correct = torch.as_tensor(correct).bool()
    if similarity.shape != correct.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and correct "
                         f"{tuple(correct.shape)} differ in shape")
    out = {}
    for k in ks:
        top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices   # (nq, k)
        hit = correct.gather(1, top).any(dim=1)                              # (nq,)
        out[k] = hit.double().mean().item()
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
        aucs = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            train = torch.cat([m[torch.randperm(len(m), generator=g)[:k]] for m in members])
            test = torch.ones(len(y), dtype=torch.bool)
            test[train] = False
            W, b = _fit_linear_probe(x[train], y[train], num_classes, weight_decay)
            probs = torch.softmax(x[test] @ W + b, dim=-1)                          # (n_test, C)
            aucs.append(macro_auc_ovr(probs, y[test]))
        results[str(k)] = sum(aucs) / len(aucs)
    return results
