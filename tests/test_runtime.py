"""runtime.py: the device and precision rules every script shares, peak memory on any OS, and no
Unix-only import at load time."""

import os
import subprocess
import sys

import pytest
import torch

from plumbing import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("capability, hip, want, why", [
    ((7, 5), None, "fp16", "compute capability 7.5 has no bf16 tensor cores: fp16 with a loss scaler"),
    ((6, 1), None, "fp16", "compute capability 6.1 has no bf16 tensor cores"),
    ((8, 0), None, "bf16", "compute capability 8.0 has bf16 tensor cores"),
    ((9, 0), None, "bf16", "compute capability 9.0 has bf16 tensor cores"),
    ((9, 0), "6.2", "bf16", "ROCm computes bf16 natively"),
])
def test_auto_precision_follows_what_the_card_computes_natively(monkeypatch, capability, hip, want, why):
    """A T4 (7.5) reports bf16 as supported (emulated) in torch 2.14: auto must still give fp16."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert runtime.resolve_precision("auto", cuda) == want
    assert why in runtime.precision_reason("auto", cuda)
    assert runtime.resolve_precision("fp32", cuda) == "fp32"          # asked for: given


def test_precision_rule_off_cuda_and_what_each_choice_builds():
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.precision_reason("auto", cpu) == "auto: fp32 on cpu"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"          # asked for: given
    assert runtime.precision_reason("bf16", cpu) == "--precision bf16"
    autocast, scaler, name = runtime.pick_precision("fp32", cpu)
    assert name == "fp32" and scaler is None
    autocast, scaler, name = runtime.pick_precision("fp16", cpu)
    assert name == "fp16" and isinstance(scaler, torch.amp.GradScaler)
    with autocast:                                  # a context, entered as nanoGPT's ctx
        assert torch.get_autocast_dtype("cpu") == torch.float16


@pytest.mark.parametrize("name, message", [
    ("cuda", "cuda: no usable CUDA device here"),
    ("cuda:3", "cuda:3: no usable CUDA device here"),
    ("mps", "mps: Apple's MPS is not available here"),
    ("gpu", "gpu: not a device name; use auto, cpu, cuda, cuda:N or mps"),
    ("meta", "meta: this project runs on cpu, cuda or mps"),
])
def test_a_device_that_is_not_here_is_one_clear_error(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(ValueError) as info:
        runtime.pick_device(name)
    assert str(info.value).startswith(message)
    assert runtime.pick_device("auto") == torch.device("cpu")


def test_peak_memory_without_proc_or_resource(monkeypatch):
    """Windows has neither /proc nor the resource module: the peak is then the Win32 call's, and
    where no source answers, None (the log says "mem n/a"), never an exception."""
    assert runtime.peak_rss_mb() > 0                                  # here: /proc/self/status
    monkeypatch.setattr(runtime, "_proc_status_mb", lambda field: None)
    assert runtime.peak_rss_mb() > 0                                  # here: resource
    monkeypatch.setitem(sys.modules, "resource", None)                # import resource fails
    monkeypatch.setattr(sys, "platform", "plan9")
    assert runtime.peak_rss_mb() is None
    calls = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(runtime, "_windows_peak_mb", lambda: calls.append(1) or 123.0)
    assert runtime.peak_rss_mb() == 123.0 and calls == [1]


def test_every_script_imports_without_unix_only_modules():
    """`import resource` (or fcntl) at module level breaks `python train.py` on Windows."""
    code = ("import sys\n"
            "sys.modules['resource'] = None\n"
            "sys.modules['fcntl'] = None\n"
            "import train, eval, bench, data, model, loss, momentum, accumulate\n"
            "import experiments.profile_step, experiments.ablation, experiments.regimes, experiments.ladder\n"
            "import plumbing.runtime, plumbing.checkpoint, tools.convert, tools.plot\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_fmt_time():
    assert runtime.fmt_time(0) == "0:00:00"
    assert runtime.fmt_time(3723.9) == "1:02:03"


def test_leave_distributed_frees_the_ddp_wrapper_before_the_group_is_destroyed(monkeypatch):
    """DDP sits in a reference cycle that holds the process group: unless it is collected first,
    the group outlives destroy_process_group() (to the interpreter's exit, where gloo can abort)."""
    import types
    import weakref

    import gc
    import torch.distributed as dist
    gc.disable()                               # only the helper's own collection may free it
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        ddp(torch.randn(4, 3)).sum().backward()
        wrapper = weakref.ref(ddp)
        parts = types.SimpleNamespace(model=ddp)
        del ddp
        assert wrapper() is not None, "no cycle: this test no longer shows what it guards against"
        seen = []
        destroy = dist.destroy_process_group
        monkeypatch.setattr(dist, "destroy_process_group",
                            lambda *a: (seen.append(wrapper() is None), destroy(*a))[1])
        runtime.leave_distributed(parts)
        assert seen == [True] and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
