"""The word-patch alignment term (loss.word_patch_loss, msd_step's word_patch, train.py's --word-patch):
a direct computation, padding that cannot matter, the model's extra outputs from the same passes,
and its weight in one step of MSD."""

import math

import pytest
import torch
import torch.nn.functional as F

import train
from accumulate import msd_step
from loss import msd_loss, positive_matrix, soft_targets, word_patch_loss
from model import DualEncoder, ModelConfig
from test_accumulate import CFG, data, setup, split


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def direct(patches, words, mask, scale, ids):
    """Loops: sim(i, j) = mean over j's real words of the best patch of i; then CLIP's loss,
    written out with its positives (every pair with the same id, uniformly)."""
    B = patches.shape[0]
    sim = torch.zeros(B, B, dtype=torch.float64)
    for i in range(B):
        for j in range(B):
            best = [max(float(patches[i, p] @ words[j, w]) for p in range(patches.shape[1]))
                    for w in range(words.shape[1]) if mask[j, w]]
            sim[i, j] = sum(best) / len(best)
    logits = scale * sim
    loss = 0.0
    for r in range(B):
        pos = [c for c in range(B) if ids[c] == ids[r]]
        for c in pos:
            loss -= (torch.log_softmax(logits[r], 0)[c] + torch.log_softmax(logits[:, r], 0)[c]) / len(pos)
    return loss / (2 * B)


def test_word_patch_loss_against_loops_one_hot_and_with_duplicates():
    patches, words = unit(5, 6, 4, seed=1), unit(5, 7, 4, seed=2)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, 3:] = False
    mask[4, 1:] = False                                       # a one-word report
    scale = torch.tensor(7.0, dtype=torch.float64)
    for ids in (torch.arange(5), torch.tensor([0, 1, 0, 2, 1])):
        got = word_patch_loss(patches, words, mask, scale, ids)
        assert torch.allclose(got, direct(patches, words, mask, 7.0, ids), atol=1e-12)
    # with all ids distinct the duplicate-aware loss is the one-hot loss (ids=None)
    assert torch.allclose(word_patch_loss(patches, words, mask, scale, None),
                          word_patch_loss(patches, words, mask, scale, torch.arange(5)), atol=1e-12)


def test_padded_words_change_nothing():
    patches, words = unit(4, 6, 4, seed=3), unit(4, 5, 4, seed=4)
    mask = torch.ones(4, 5, dtype=torch.bool)
    scale = torch.tensor(10.0, dtype=torch.float64)
    longer = torch.cat([words, unit(4, 3, 4, seed=5)], dim=1)              # junk where the padding is
    longer_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    assert torch.allclose(word_patch_loss(patches, words, mask, scale),
                          word_patch_loss(patches, longer, longer_mask, scale), atol=1e-12)


@pytest.mark.parametrize("pool", ["max", "mean", "cls"])
def test_forward_with_words_gives_the_same_embeddings_and_the_patches(pool):
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**CFG, pool=pool)).double()
    images, tokens, _ = data(6)
    img, txt, s = model(images, tokens)
    img2, txt2, s2, patches, words, mask = model(images, tokens, words=True)
    assert torch.equal(img, img2) and torch.equal(txt, txt2) and torch.equal(s, s2)
    assert torch.allclose(patches, model.encode_patches(images), atol=1e-12)
    assert torch.equal(mask, tokens != 0)
    assert words.shape == (*tokens.shape, CFG["embed_dim"])
    assert torch.allclose(words.norm(dim=-1), torch.ones(tokens.shape, dtype=torch.float64))


def test_msd_step_adds_the_term_weighted_by_each_micro_batch_share():
    """k = 2 micro-batches: the gradient of msd_step(word_patch=w) is that of the window's MSD loss
    plus w * sum_j (b_j / N) * word_patch_loss(micro-batch j), computed directly."""
    w, k, n = 0.7, 2, 8
    student, teacher, queue = setup()
    images, tokens, ids = data(n, dup_ids=True)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    loss = msd_step(student, teacher, None, opt, split(images, tokens, ids, k), alpha=0.4,
                    momentum=0.9, duplicate_aware=True, word_patch=w)
    got = {name: p.grad.clone() for name, p in student.named_parameters()}

    ref_student, ref_teacher, _ = setup()
    with torch.no_grad():
        t_img, t_txt = ref_teacher.encode_image(images), ref_teacher.encode_text(tokens)
    img, txt, s = ref_student(images, tokens)
    P = positive_matrix(ids, ids, 0, True, torch.float64)
    y_i2t = soft_targets(t_img, t_txt, s.detach(), 0.4, P)
    y_t2i = soft_targets(t_txt, t_img, s.detach(), 0.4, P)
    total = msd_loss(img, txt, t_img, t_txt, y_i2t, y_t2i, s, normaliser=n)
    for part in range(k):
        rows = slice(part * n // k, (part + 1) * n // k)
        _, _, s_j, patches, words, mask = ref_student(images[rows], tokens[rows], words=True)
        total = total + w * (n // k) / n * word_patch_loss(patches, words, mask, s_j, ids[rows])
    total.backward()
    assert math.isclose(float(loss), float(total.detach()), rel_tol=1e-10)
    for name, p in ref_student.named_parameters():
        assert torch.allclose(got[name], p.grad, atol=1e-10), name
    assert got["logit_scale"].abs().item() > 0


def test_train_refuses_the_term_outside_msd(capsys):
    with pytest.raises(SystemExit):
        train.get_args(["--method", "clip", "--word-patch", "1"])
    assert "--word-patch must be >= 0 and is an MSD term (--method msd), got 1 with --method clip" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.get_args(["--word-patch", "-1"])
    assert "--word-patch must be >= 0" in capsys.readouterr().err
    assert train.get_args(["--word-patch", "0.5"])[1].word_patch == 0.5
    assert train.get_args([])[1].word_patch == 0.0                         # off by default
