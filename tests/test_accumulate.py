"""accumulate.py: k micro-batches of b give the gradients, loss, teacher and queue of one batch of k·b,
for MSD and for CLIP with the feature cache; naive CLIP accumulation is the mean of k small batches."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from accumulate import NonFiniteLossError, clip_naive_step, clip_step, msd_step
from loss import FeatureQueue, clip_loss, msd_loss, positive_matrix, soft_targets
from model import DualEncoder, ModelConfig
from momentum import make_teacher

CFG = dict(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
           vocab_size=30, context_length=8, text_width=16, text_layers=1, text_heads=2, embed_dim=8)


def setup(seed=0, queue_size=12, prefill=5):
    """A float64 student, a teacher that differs from it, and a partly filled queue."""
    torch.manual_seed(seed)
    student = DualEncoder(ModelConfig(**CFG)).double()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        student.logit_scale.fill_(2.5)   # a non-default s, so its gradient is not special
    queue = FeatureQueue(queue_size, CFG["embed_dim"]).double()
    if prefill:
        queue.enqueue(F.normalize(torch.randn(prefill, 8, dtype=torch.float64), dim=1),
                      F.normalize(torch.randn(prefill, 8, dtype=torch.float64), dim=1),
                      torch.arange(100, 100 + prefill))
    return student, teacher, queue


def data(n, seed=1, dup_ids=False):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 16, 16, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 30, (n, 8), generator=g)
    tokens[::3, 5:] = 0   # some padding
    ids = torch.arange(n) % 3 if dup_ids else torch.arange(n)
    return images, tokens, ids


def split(images, tokens, ids, k):
    return list(zip(images.chunk(k), tokens.chunk(k), ids.chunk(k)))


def run(k, alpha=0.4, dup=False, n=8, momentum=0.9, scaler=None, queue_size=12, prefill=5):
    student, teacher, queue = setup(queue_size=queue_size, prefill=prefill)
    teacher0 = copy.deepcopy(teacher)
    queue0 = copy.deepcopy(queue)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)   # lr 0: the step leaves the student as is
    loss = msd_step(student, teacher, queue, opt, split(*data(n, dup_ids=dup), k), alpha=alpha,
                    momentum=momentum, duplicate_aware=dup, scaler=scaler)
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    return dict(loss=loss, grads=grads, student=student, teacher=teacher, teacher0=teacher0,
                queue=queue, queue0=queue0)


def reference(alpha, dup, n=8):
    """The one-batch loss of docs/method.md computed directly, and its gradients."""
    student, teacher, queue = setup()
    images, tokens, ids = data(n, dup_ids=dup)
    with torch.no_grad():
        t_img, t_txt = teacher.encode_image(images), teacher.encode_text(tokens)
    q_img, q_txt, q_ids = queue.contents()
    bank_img, bank_txt, bank_ids = torch.cat([t_img, q_img]), torch.cat([t_txt, q_txt]), torch.cat([ids, q_ids])
    img, txt, s = student(images, tokens)
    P = positive_matrix(ids, bank_ids, 0, dup, torch.float64)
    loss = msd_loss(img, txt, bank_img, bank_txt, soft_targets(t_img, bank_txt, s, alpha, P),
                    soft_targets(t_txt, bank_img, s, alpha, P), s, normaliser=n)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in student.named_parameters()}


def assert_grads_equal(a, b, rtol=1e-8):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=1e-12, msg=name)


@pytest.mark.parametrize("alpha,dup", [(0.0, False), (0.4, False), (0.4, True)])
def test_k_micro_batches_equal_one_batch(alpha, dup):
    want_loss, want_grads = reference(alpha, dup)
    assert want_grads["logit_scale"].abs() > 0
    for k in (1, 2, 4, 8):
        got = run(k, alpha, dup)
        assert_grads_equal(got["grads"], want_grads)
        torch.testing.assert_close(got["loss"], want_loss, rtol=1e-10, atol=0)


def test_teacher_moves_once_per_optimizer_step_whatever_k():
    m = 0.9
    for k in (1, 2, 8):
        r = run(k, momentum=m)
        for (name, t), t0, s in zip(r["teacher"].named_parameters(), r["teacher0"].parameters(),
                                    r["student"].parameters()):
            # exactly one update θ' ← m θ' + (1 − m) θ, not m^k
            torch.testing.assert_close(t, m * t0 + (1 - m) * s, rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("queue_size,prefill", [(12, 5), (16, 0), (5, 3)])
def test_queue_holds_the_window_in_order_at_the_pointer(queue_size, prefill):
    n = 8
    for k in (1, 4):
        r = run(k, n=n, queue_size=queue_size, prefill=prefill)
        images, tokens, ids = data(n)
        with torch.no_grad():
            t_img, t_txt = r["teacher0"].encode_image(images), r["teacher0"].encode_text(tokens)
        ptr0 = int(r["queue0"].ptr)
        q = r["queue"]
        # the last min(n, K) window entries, each at (ptr0 + position) mod K
        for i in range(max(0, n - queue_size), n):
            slot = (ptr0 + i) % queue_size
            torch.testing.assert_close(q.image[slot], t_img[i], rtol=0, atol=1e-14)
            torch.testing.assert_close(q.text[slot], t_txt[i], rtol=0, atol=1e-14)
            assert q.ids[slot] == ids[i]
        assert int(q.ptr) == (ptr0 + n) % queue_size
        assert len(q) == min(queue_size, prefill + n)


def test_grad_scaler_gives_the_same_gradients():
    want = run(2)["grads"]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    got = run(2, scaler=scaler)
    assert_grads_equal(got["grads"], want, rtol=1e-12)   # unscale_ left the true gradients in .grad


def test_autocast_bf16_runs_close_to_float32():
    torch.manual_seed(0)
    student = DualEncoder(ModelConfig(**CFG))
    images, tokens, ids = data(8)
    batches = split(images.float(), tokens, ids, 2)
    losses = []
    for use_amp in (False, True):
        s = copy.deepcopy(student)
        teacher, queue = make_teacher(s), FeatureQueue(16, 8)
        ac = torch.autocast("cpu", dtype=torch.bfloat16) if use_amp else None   # a context, as nanoGPT's ctx
        kwargs = {"autocast": ac} if ac else {}
        opt = torch.optim.AdamW(s.parameters(), lr=1e-3)
        losses.append(msd_step(s, teacher, queue, opt, batches, alpha=0.4, momentum=0.99, **kwargs))
        assert queue.image.dtype == torch.float32 and len(queue) == 8
    assert losses[1].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=0)


def test_non_finite_loss_raises_before_the_step():
    student, teacher, queue = setup()
    with torch.no_grad():
        student.image_proj.weight.fill_(float("nan"))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        msd_step(student, teacher, queue, opt, split(*data(8), 2), alpha=0.4, momentum=0.9)
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]) or torch.isnan(v).all(), k
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert len(queue) == 5


@pytest.mark.parametrize("dup", [False, True])
def test_clip_naive_step_is_the_mean_of_micro_batch_losses(dup):
    torch.manual_seed(0)
    student = DualEncoder(ModelConfig(**CFG)).double()
    ref = copy.deepcopy(student)
    images, tokens, ids = data(8, dup_ids=dup)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    loss = clip_naive_step(student, opt, split(images, tokens, ids, 2), duplicate_aware=dup)
    total = 0
    for x, t, rid in split(images, tokens, ids, 2):
        i, tx, s = ref(x, t)
        total = total + clip_loss(i, tx, s, rid if dup else None) / 2
    total.backward()
    torch.testing.assert_close(loss, total.detach(), rtol=1e-12, atol=0)
    for (n, p), q in zip(student.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=n)


# ---- CLIP with the feature cache: k micro-batches of b are CLIP at batch k·b ----

def run_clip(k, n=8, scaler=None, step=clip_step, dup=False):
    student = setup()[0]                                  # float64, logit_scale 2.5
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    loss = step(student, opt, split(*data(n, dup_ids=dup), k), scaler=scaler, duplicate_aware=dup)
    return loss, {name: p.grad.clone() for name, p in student.named_parameters()}


def clip_reference(n=8, dup=False):
    """CLIP's loss on one batch of all n pairs (duplicate-aware: ids 0, 1, 2, 0, 1, 2, ...), and
    its gradients."""
    student = setup()[0]
    images, tokens, ids = data(n, dup_ids=dup)
    img, txt, s = student(images, tokens)
    loss = clip_loss(img, txt, s, ids if dup else None)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    return loss.detach(), grads, (img.detach(), txt.detach(), s.detach())


@pytest.mark.parametrize("dup", [False, True])
def test_clip_feature_cache_equals_one_batch_of_k_b(dup):
    want_loss, want_grads, _ = clip_reference(dup=dup)
    for k in (1, 2, 4, 8):
        loss, grads = run_clip(k, dup=dup)
        assert_grads_equal(grads, want_grads)             # every parameter, logit_scale included
        torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=0)
    # and naive accumulation is not that batch (else the test above could not tell them apart)
    _, naive = run_clip(2, step=clip_naive_step, dup=dup)
    assert not torch.allclose(naive["image_proj.weight"], want_grads["image_proj.weight"], rtol=1e-3)
    # and duplicate-aware positives are not one-hot ones
    other = clip_reference(dup=not dup)[1]
    assert not torch.allclose(other["image_proj.weight"], want_grads["image_proj.weight"], rtol=1e-3)


def test_clip_feature_cache_counts_the_logit_scale_gradient_once():
    """logit_scale touches every logit of every micro-batch's window loss: letting each of the k
    backward passes carry dL/ds gives k times the gradient. Against the derivative written out:
    with cosines z = I Tᵀ, dL/ds = ½ (mean_i Σ_c softmax_row(s z)_ic z_ic − z_ii)
    + ½ (the same over columns), and d/dlogit_scale = s · dL/ds."""
    _, _, (img, txt, s) = clip_reference()
    z = img @ txt.T                                                        # (8, 8)
    diag = z.diagonal()
    d_rows = ((F.softmax(s * z, dim=1) * z).sum(1) - diag).mean()
    d_cols = ((F.softmax(s * z, dim=0) * z).sum(0) - diag).mean()
    want = s * (d_rows + d_cols) / 2
    assert want.abs() > 0.05                                # large enough to see a factor k
    for k in (2, 8):
        got = run_clip(k)[1]["logit_scale"]
        torch.testing.assert_close(got, want, rtol=1e-8, atol=0, msg=f"k = {k}: {got / want:.3f}x")


def test_clip_feature_cache_with_a_grad_scaler_gives_the_same_gradients():
    _, want = run_clip(4)
    _, got = run_clip(4, scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    assert_grads_equal(got, want, rtol=1e-12)


# ---- DDP: two ranks of b equal one process with 2b (gloo on the CPU) ----
# One spawn of two gloo ranks runs every DDP case (starting the processes is most of the time);
# each rank saves what it computed, and the tests below compare that with one process.

def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, tokens, ids = data(16)
    # the global window is items 0..15; rank r takes its own contiguous half, in k micro-batches
    mine = slice(rank * 8, rank * 8 + 8)
    out = {}
    student, teacher, queue = setup()
    model = torch.nn.parallel.DistributedDataParallel(student)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = msd_step(model, teacher, queue, opt, split(images[mine], tokens[mine], ids[mine], 2),
                    alpha=0.4, momentum=0.9)
    out["msd"] = {"grads": {n: p.grad for n, p in student.named_parameters()}, "loss": loss,
                  "queue": queue.state_dict()}
    dup_ids = data(16, dup_ids=True)[2]
    for k, dup in ((1, False), (2, False), (2, True)):   # CLIP: one micro-batch (the cache is only
        student = setup()[0]                               # the gather), two (no_sync), duplicates
        model = torch.nn.parallel.DistributedDataParallel(student)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        ids_here = dup_ids if dup else ids
        loss = clip_step(model, opt, split(images[mine], tokens[mine], ids_here[mine], k),
                         duplicate_aware=dup)
        out[f"clip{k}{'dup' if dup else ''}"] = {
            "grads": {n: p.grad for n, p in student.named_parameters()}, "loss": loss}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    import socket
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_ddp_two_ranks_equal_one_process_with_twice_the_batch(ddp_ranks):
    want = run(4, n=16)   # one process, the whole window of 16 in 4 micro-batches of 4
    r0, r1 = (r["msd"] for r in ddp_ranks)
    # DDP averages the ranks' gradients; each rank normalised by its own N = 8, so the mean equals
    # the one-process gradient normalised by 16.
    assert_grads_equal(r0["grads"], want["grads"])
    assert_grads_equal(r1["grads"], want["grads"])
    torch.testing.assert_close((r0["loss"] + r1["loss"]) / 2, want["loss"], rtol=1e-10, atol=0)
    for key, value in want["queue"].state_dict().items():   # every rank holds the same queue
        torch.testing.assert_close(r0["queue"][key], value, rtol=0, atol=1e-14)
        torch.testing.assert_close(r1["queue"][key], value, rtol=0, atol=1e-14)


def test_ddp_clip_feature_cache_equals_one_process_with_the_whole_window(ddp_ranks):
    """Two ranks of 8 pairs each (in 1 or 2 micro-batches): CLIP at batch 16, on every rank."""
    for case, dup in (("clip1", False), ("clip2", False), ("clip2dup", True)):
        # duplicates span the ranks (ids 0, 1, 2 repeat across both halves of the window)
        want_loss, want_grads, _ = clip_reference(16, dup=dup)
        for rank, got in enumerate(ddp_ranks):
            assert_grads_equal(got[case]["grads"], want_grads)
            torch.testing.assert_close(got[case]["loss"], want_loss, rtol=1e-10, atol=0,
                                       msg=f"rank {rank}, {case}")


# ---- what a reader who copies accumulate.py (with loss.py and momentum.py) can rely on ----------

def test_step_defaults_are_train_py_defaults():
    """A copied call with the defaults computes what `python train.py` does."""
    import inspect
    from train import build_parser
    train_default = build_parser().get_default("duplicate_aware")
    for step in (msd_step, clip_step, clip_naive_step):
        assert inspect.signature(step).parameters["duplicate_aware"].default == train_default, step


def test_no_queue_is_an_empty_queue():
    a = run(2, queue_size=0, prefill=0)
    student, teacher, _ = setup(queue_size=0, prefill=0)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    loss = msd_step(student, teacher, None, opt, split(*data(8), 2), alpha=0.4, momentum=0.9,
                    duplicate_aware=False)
    torch.testing.assert_close(loss, a["loss"], rtol=0, atol=0)
    assert_grads_equal({n: p.grad for n, p in student.named_parameters()}, a["grads"], rtol=0)


def test_features_off_the_unit_sphere_and_a_student_without_logit_scale_are_refused():
    student, teacher, queue = setup()
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    raw = teacher.encode_image
    teacher.encode_image = lambda x: 3.0 * raw(x)        # as open_clip's encode_image by default
    with pytest.raises(ValueError, match="teacher.encode_image returned features whose L2 norm is off 1"):
        msd_step(student, teacher, queue, opt, split(*data(8), 2), alpha=0.4, momentum=0.9)

    class NoScale(torch.nn.Module):
        def forward(self, images, tokens):
            return student(images, tokens)
    with pytest.raises(ValueError, match="has no logit_scale parameter"):
        msd_step(NoScale(), setup()[1], queue, opt, split(*data(8), 2), alpha=0.4, momentum=0.9)


def test_the_loss_normaliser_must_be_given():
    """Left to default, a micro-batch mean would silently weigh a window k times too much."""
    x = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    P = torch.eye(4, dtype=torch.float64)
    with pytest.raises(TypeError, match="normaliser"):
        msd_loss(x, x, x, x, P, P, torch.tensor(2.0))
