"""loss.py: the loss against direct computations, target rows, permutation invariance, duplicate-aware
positives, and the ring buffer."""

import pytest
import torch
import torch.nn.functional as F

from loss import FeatureQueue, clip_loss, msd_loss, positive_matrix, soft_targets



@pytest.fixture(autouse=True)
def float64_default():
    """Equalities here are asserted in float64; restore the default so other test files are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def window_loss(img, txt, t_img, t_txt, q_img, q_txt, ids, q_ids, scale, alpha, dup=False):
    """The whole docs/method.md loss for one window via the library functions."""
    bank_img, bank_txt = torch.cat([t_img, q_img]), torch.cat([t_txt, q_txt])
    bank_ids = torch.cat([ids, q_ids])
    P = positive_matrix(ids, bank_ids, 0, dup, img.dtype)
    y_i2t = soft_targets(t_img, bank_txt, scale, alpha, P)
    y_t2i = soft_targets(t_txt, bank_img, scale, alpha, P)
    return msd_loss(img, txt, bank_img, bank_txt, y_i2t, y_t2i, scale, normaliser=img.shape[0])


def test_alpha_zero_empty_queue_is_clip_infonce():
    """With α = 0, K = 0 the loss is CLIP's symmetric InfoNCE of the student against the teacher."""
    N, D = 6, 8
    img, txt, t_img, t_txt = unit(N, D, seed=1), unit(N, D, seed=2), unit(N, D, seed=3), unit(N, D, seed=4)
    s = torch.tensor(14.0)
    empty, no_ids = torch.zeros(0, D), torch.zeros(0, dtype=torch.long)
    got = window_loss(img, txt, t_img, t_txt, empty, empty, torch.arange(N), no_ids, s, alpha=0.0)
    labels = torch.arange(N)
    want = (F.cross_entropy(s * img @ t_txt.T, labels) + F.cross_entropy(s * txt @ t_img.T, labels)) / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # and with the teacher equal to the student, it is plain CLIP
    torch.testing.assert_close(window_loss(img, txt, img, txt, empty, empty, labels, no_ids, s, 0.0),
                               clip_loss(img, txt, s), rtol=1e-12, atol=0)


def test_alpha_positive_matches_direct_formula():
    N, K, D, alpha = 5, 7, 8, 0.4
    img, txt = unit(N, D, seed=1), unit(N, D, seed=2)
    t_img, t_txt = unit(N, D, seed=3), unit(N, D, seed=4)
    q_img, q_txt = unit(K, D, seed=5), unit(K, D, seed=6)
    s = torch.tensor(9.5)
    got = window_loss(img, txt, t_img, t_txt, q_img, q_txt, torch.arange(N), torch.arange(10, 10 + K),
                      s, alpha)
    # docs/method.md steps 2-5 written out with explicit loops
    B_T, B_I = torch.cat([t_txt, q_txt]), torch.cat([t_img, q_img])
    total = 0.0
    for n in range(N):
        onehot = torch.zeros(N + K)
        onehot[n] = 1
        y_i2t = alpha * torch.softmax(s * t_img[n] @ B_T.T, 0) + (1 - alpha) * onehot
        y_t2i = alpha * torch.softmax(s * t_txt[n] @ B_I.T, 0) + (1 - alpha) * onehot
        total += -(y_i2t * torch.log_softmax(s * img[n] @ B_T.T, 0)).sum()
        total += -(y_t2i * torch.log_softmax(s * txt[n] @ B_I.T, 0)).sum()
    torch.testing.assert_close(got, total / (2 * N), rtol=1e-12, atol=0)


def test_target_rows_sum_to_one():
    N, M, D = 4, 9, 8
    bank_ids = torch.tensor([0, 1, 2, 3, 0, 5, 1, 1, 8])
    for dup in (False, True):
        P = positive_matrix(bank_ids[:N], bank_ids, 0, dup, torch.float64)
        Y = soft_targets(unit(N, D), unit(M, D, seed=1), torch.tensor(20.0), 0.4, P)
        torch.testing.assert_close(Y.sum(1), torch.ones(N), rtol=0, atol=1e-12)
        assert (Y >= 0).all()


def test_loss_is_invariant_to_queue_order():
    N, K, D = 4, 10, 8
    args = [unit(N, D, seed=i) for i in range(4)]
    q_img, q_txt, q_ids = unit(K, D, seed=5), unit(K, D, seed=6), torch.arange(100, 100 + K)
    s = torch.tensor(12.0)
    a = window_loss(*args, q_img, q_txt, torch.arange(N), q_ids, s, 0.4)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    b = window_loss(*args, q_img[perm], q_txt[perm], torch.arange(N), q_ids[perm], s, 0.4)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    # a sanity check that the queue matters at all: dropping it changes the value
    c = window_loss(*args, q_img[:0], q_txt[:0], torch.arange(N), q_ids[:0], s, 0.4)
    assert not torch.isclose(a, c)


def test_duplicate_aware_positives():
    ids = torch.tensor([3, 4, 5])
    bank_ids = torch.tensor([3, 4, 5, 6, 7])
    torch.testing.assert_close(positive_matrix(ids, bank_ids, 0, True),
                               positive_matrix(ids, bank_ids, 0, False), rtol=0, atol=0)
    # identical reports (id 3) at columns 0, 2, 4 share the positive mass of rows 0 and 2
    ids = torch.tensor([3, 4, 3])
    bank_ids = torch.tensor([3, 4, 3, 9, 3])
    P = positive_matrix(ids, bank_ids, 0, True, torch.float64)
    third = 1 / 3
    want = torch.tensor([[third, 0, third, 0, third], [0, 1, 0, 0, 0], [third, 0, third, 0, third]])
    torch.testing.assert_close(P, want, rtol=0, atol=1e-12)


def test_clip_loss_with_distinct_ids_is_the_one_hot_loss():
    img, txt, s = unit(7, 8, seed=1), unit(7, 8, seed=2), torch.tensor(11.0)
    one_hot = clip_loss(img, txt, s)
    torch.testing.assert_close(clip_loss(img, txt, s, torch.tensor([9, 2, 5, 7, 1, 0, 4])), one_hot,
                               rtol=1e-14, atol=0)


def test_clip_loss_duplicate_aware_against_a_direct_computation():
    """Rows 0, 2, 5 share report 3, rows 1, 4 report 8, row 3 is alone: each image's target is
    uniform over the texts with its report, and each text's over the images with its report."""
    ids = torch.tensor([3, 8, 3, 6, 8, 3])
    img, txt, s = unit(6, 8, seed=3), unit(6, 8, seed=4), torch.tensor(7.5)
    logits = s * img @ txt.T
    total = 0.0
    for i in range(6):
        same = [j for j in range(6) if ids[j] == ids[i]]
        # image i against every text, and text i against every image, its positives averaged
        total -= sum(torch.log_softmax(logits[i], 0)[j] for j in same) / len(same)
        total -= sum(torch.log_softmax(logits[:, i], 0)[j] for j in same) / len(same)
    want = total / 12
    got = clip_loss(img, txt, s, ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert not torch.isclose(got, clip_loss(img, txt, s))   # the duplicates do change the loss


def test_one_hot_positives_at_offset():
    P = positive_matrix(torch.tensor([7, 8]), torch.arange(6), offset=3)
    assert P.nonzero().tolist() == [[0, 3], [1, 4]]


def test_queue_fills_then_wraps():
    q = FeatureQueue(size=5, dim=2)
    assert len(q) == 0 and q.contents()[0].shape == (0, 2)

    def feats(a, b):
        x = torch.arange(a, b, dtype=torch.float32)
        return torch.stack([x, -x], 1), torch.stack([x, x], 1), torch.arange(a, b)

    q.enqueue(*feats(0, 3))
    assert len(q) == 3 and int(q.ptr) == 3
    assert q.contents()[2].tolist() == [0, 1, 2]
    q.enqueue(*feats(3, 6))          # 3 more into a queue of 5: slots 3, 4, then wraps to 0
    assert len(q) == 5 and int(q.ptr) == 1
    assert q.ids.tolist() == [5, 1, 2, 3, 4]
    assert q.image[:, 0].tolist() == [5, 1, 2, 3, 4] and q.text[:, 1].tolist() == [5, 1, 2, 3, 4]
    q.enqueue(*feats(6, 13))         # 7 entries > K: only the last 5 remain, as if written one by one
    assert int(q.ptr) == (1 + 7) % 5
    assert q.ids.tolist() == [10, 11, 12, 8, 9]


def test_queue_state_round_trips():
    q = FeatureQueue(4, 3)
    q.enqueue(unit(3, 3).float(), unit(3, 3, seed=1).float(), torch.tensor([1, 2, 3]))
    r = FeatureQueue(4, 3)
    r.load_state_dict(q.state_dict())
    assert len(r) == 3 and int(r.ptr) == 3 and torch.equal(r.image, q.image)


def test_zero_size_queue_is_always_empty():
    q = FeatureQueue(0, 4)
    q.enqueue(unit(3, 4).float(), unit(3, 4).float(), torch.arange(3))
    assert len(q) == 0 and q.contents()[0].shape == (0, 4)
    with pytest.raises(ValueError, match="queue size must be >= 0"):
        FeatureQueue(-1, 4)


def test_a_row_whose_report_is_not_in_the_bank_is_an_error_not_nan():
    """Duplicate-aware positives divide by the number of matching bank columns: a row whose id is
    nowhere in the bank would be 0 / 0 = NaN in every column. That can only be a wrongly assembled
    bank, so it is refused with the ids at fault."""
    with pytest.raises(ValueError, match=r"report id\(s\) \[9\] of the rows are not in the bank"):
        positive_matrix(torch.tensor([3, 9]), torch.tensor([3, 4, 5]), 0, duplicate_aware=True)
