"""Stopping a run: one Ctrl-C, however many processes it reaches, saves and exits; a second one
later quits at once. Under torchrun every rank stops after the same step, so a checkpoint is
always written, and the resumed run ends with the weights of the run left alone."""

import os
import signal
import subprocess
import sys

import pytest

from plumbing import runtime
from test_train import SMALL, assert_same_tensors, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_signal_repeated_at_once_is_one_request_and_a_later_one_quits(monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        flag = runtime.StopFlag()
        clock = [100.0]
        monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
        flag._handler(signal.SIGINT, None)          # the terminal's Ctrl-C
        clock[0] += 0.2
        flag._handler(signal.SIGTERM, None)         # ... forwarded by torchrun: the same request
        assert flag.requested
        clock[0] += runtime.StopFlag.GRACE_S         # the user presses Ctrl-C again, later
        with pytest.raises(KeyboardInterrupt):
            flag._handler(signal.SIGINT, None)
        assert flag.any_rank("cpu") is True          # one process: its own flag
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


COMMON = [*SMALL, "--steps", "40", "--log-every", "1", "--save-every", "0", "--eval-every", "0",
          "--queue-size", "0", "--alpha-warmup", "0"]


def torchrun(out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            os.path.join(ROOT, "train.py"), "--out", str(out), *COMMON, *extra]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_torchrun(out, *extra, env=ENV):
    """torchrun to the end; on failure the assertion shows what the ranks printed."""
    proc = subprocess.run(torchrun(out, *extra), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def left_alone(tmp_path_factory):
    """The torchrun run that no signal reaches: what every stopped and resumed run must end as."""
    out = tmp_path_factory.mktemp("ref")
    run_torchrun(out)
    return load(out / "ckpt.pt")


@pytest.mark.slow   # several torchrun runs: `pytest -m slow`, CI's second step
@pytest.mark.parametrize("signum, at", [(signal.SIGINT, 5), (signal.SIGTERM, 9), (signal.SIGINT, 14)])
def test_a_signal_to_torchrun_s_process_group_always_leaves_a_checkpoint(tmp_path, left_alone, signum,
                                                                          at):
    env = ENV
    proc = subprocess.Popen(torchrun(tmp_path / "cut"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:                       # signal the whole group, as a terminal does
        lines.append(line)
        if line.startswith(f"step {at:5d}/"):
            os.killpg(proc.pid, signum)
            break
    lines += proc.stdout.read().splitlines(keepends=True)
    proc.wait(timeout=300)
    log = "".join(lines)
    saved = load(tmp_path / "cut" / "ckpt.pt")       # always there, whatever step it stopped after
    assert at <= saved["step"] < 40, log[-2000:]
    assert f"saved {tmp_path / 'cut' / 'ckpt.pt'} at step {saved['step']}" in log, log[-2000:]
    run_torchrun(tmp_path / "cut", "--resume", env=env)
    cut = load(tmp_path / "cut" / "ckpt.pt")
    for key in ("student", "teacher", "optimizer", "step"):
        assert_same_tensors(left_alone[key], cut[key], key)
