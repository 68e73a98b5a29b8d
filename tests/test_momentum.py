"""momentum.py: the EMA formula, its endpoints, no gradients, in-place updates, the schedule."""

import math

import pytest
import torch
import torch.nn as nn

from momentum import ema_update, make_teacher, momentum_at, momentum_for_half_life


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)   # float buffers (running stats) and an integer one

    def forward(self, x):
        return self.bn(self.lin(x))


def perturbed_pair():
    torch.manual_seed(0)
    student = Net()
    student(torch.randn(8, 4))          # moves the running stats and num_batches_tracked
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(8, 4))
    return student, teacher


def test_update_equals_formula_for_params_and_float_buffers():
    student, teacher = perturbed_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = 0.9
    ema_update(teacher, student, m)
    s = student.state_dict()
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, m * before[k] + (1 - m) * s[k], rtol=0, atol=1e-6)
        else:   # integer buffers are copied
            assert torch.equal(v, s[k]), k
    assert teacher.bn.num_batches_tracked.item() == 2


def test_m_one_keeps_teacher_and_m_zero_copies_student():
    student, teacher = perturbed_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items() if v.is_floating_point()}
    ema_update(teacher, student, 1.0)
    for k, v in before.items():
        assert torch.equal(teacher.state_dict()[k], v), k
    ema_update(teacher, student, 0.0)
    for k, v in student.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k


def test_teacher_never_gets_grad():
    student, teacher = perturbed_pair()
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(8, 4)).sum() + student(torch.randn(8, 4)).sum()
    out.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    ema_update(teacher, student, 0.5)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_update_is_in_place():
    student, teacher = perturbed_pair()
    ptrs = [t.data_ptr() for t in teacher.state_dict().values()]
    params = list(teacher.parameters())
    ema_update(teacher, student, 0.3)
    assert ptrs == [t.data_ptr() for t in teacher.state_dict().values()]
    assert all(a is b for a, b in zip(params, teacher.parameters()))


def test_bad_momentum_is_refused():
    student, teacher = perturbed_pair()
    with pytest.raises(ValueError, match="momentum must be in"):
        ema_update(teacher, student, 1.5)


def test_schedules():
    assert momentum_at(0, 100, 0.99, "constant") == momentum_at(77, 100, 0.99, "constant") == 0.99
    assert momentum_at(0, 100, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(100, 100, 0.99, "cosine") == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.99, "cosine") == pytest.approx(0.995)
    values = [momentum_at(s, 100, 0.99, "cosine") for s in range(101)]
    assert all(b > a for a, b in zip(values, values[1:]))        # strictly increasing
    assert momentum_at(25, 100, 0.9, "cosine") == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    with pytest.raises(ValueError, match="unknown momentum schedule 'linear'"):
        momentum_at(0, 10, 0.99, "linear")


def test_half_life_momentum_halves_an_old_weight_in_that_share_of_the_run():
    m = momentum_for_half_life(0.05, 600)            # a 30-step half-life
    assert m ** 30 == pytest.approx(0.5, rel=1e-12)
    assert momentum_for_half_life(0.23, 600) == pytest.approx(0.995, abs=1e-4)   # the usual m
    # an EMA run for the half-life leaves exactly half of the old value
    teacher, student = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(0.0)
    for _ in range(30):
        ema_update(teacher, student, m)
    assert teacher.weight.item() == pytest.approx(0.5, rel=1e-6)
    for bad in [(0, 600), (-0.1, 600), (0.1, 0)]:
        with pytest.raises(ValueError, match="must be positive"):
            momentum_for_half_life(*bad)


def test_momentum_at_has_no_default_base():
    """The right m depends on the run's length (0.98 for the 500-step default, ALBEF's 0.995 for
    long runs): a default here would silently disagree with train.py's."""
    import inspect
    assert inspect.signature(momentum_at).parameters["base"].default is inspect.Parameter.empty
