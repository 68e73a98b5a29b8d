"""Faults a user meets, each one clear line with nothing lost: a full disk while a run writes, two
runs on one --out, an --out or --data-cache that cannot be a folder, a device that is not here,
a --resume without its tokenizer, another run's tokenizer, an eval.py output that cannot be
written. None of these needs root: the full disk is the operating system's per-file size limit
(RLIMIT_FSIZE, which fails a write exactly as a full disk does, with another errno) or a write
made to fail in the process."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from plumbing import runtime
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--image-size", "32", "--n-train", "512", "--batch-size", "8", "--accum-steps", "2",
         "--steps", "4", "--warmup-steps", "1", "--vocab-size", "300", "--log-every", "1",
         "--save-every", "2", "--eval-every", "0", "--eval-per-class", "4", "--eval-retrieval", "10",
         "--data-cache", "", "--workers", "1"]
unix_only = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is a Unix limit")


def run(script, *args, limit_bytes=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if limit_bytes else None)


def last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def keep_signal_handlers():
    """train.main() in this process installs its Ctrl-C handler: put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


# ---- a full disk ----------------------------------------------------------------------------------

def test_a_checkpoint_that_fills_the_disk_keeps_the_last_good_one(tmp_path, monkeypatch, capsys,
                                                                   keep_signal_handlers):
    """The save at step 4 fails as torch.save fails on a full disk (a RuntimeError around the
    OSError, after part of the file is written): one line naming the path, the reason and the
    step-2 checkpoint that is intact; no temporary file left; exit status 1; and the same command
    with --resume then finishes the run."""
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f)
        f.write(b"PK\x03\x04" + bytes(4096))
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640")

    monkeypatch.setattr(runtime.torch, "save", save_then_fill_the_disk)
    assert train.main(["--out", str(out), *SMALL]) == 1
    ckpt_path = out / "ckpt.pt"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train.py: error: cannot write {ckpt_path}: no space left on device; {ckpt_path} of step 2 "
        f"is intact: free space, then run the same command with --resume")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "ckpt.pt", "metrics.jsonl",
                                                     "tokenizer.json"]
    assert torch.load(ckpt_path, weights_only=True)["step"] == 2
    monkeypatch.setattr(runtime.torch, "save", real_save)
    proc = run("train.py", "--out", out, *SMALL, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert torch.load(ckpt_path, weights_only=True)["step"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow   # several runs of train.py: `pytest -m slow`, CI's second step
@unix_only
def test_a_real_write_failure_of_the_first_checkpoint(tmp_path):
    """A real failing write: files may not grow past 1 MB, so the tokenizer and the metrics are
    written and the first checkpoint (about 25 MB) is not."""
    out = tmp_path / "run"
    proc = run("train.py", "--out", out, *SMALL, limit_bytes=1 << 20)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last_line(proc) == (f"train.py: error: cannot write {out / 'ckpt.pt'}: file too large; "
                               f"no checkpoint was written yet: free space, then run the same "
                               f"command again")
    assert not (out / "ckpt.pt.tmp").exists() and not (out / "ckpt.pt").exists()
    # and the same command then runs from the start, its metrics not mixed with the dead run's
    assert run("train.py", "--out", out, *SMALL).returncode == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@unix_only
def test_a_data_cache_that_fills_the_disk(tmp_path):
    cache = tmp_path / "cache"
    proc = run("train.py", "--out", tmp_path / "run", *SMALL, "--data-cache", cache,
               limit_bytes=200_000)                       # 512 images of 32 px: 0.5 MB
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = last_line(proc)
    assert line.startswith(f"train.py: error: cannot write {cache / 'train-n512-s32-v'}")
    assert line.endswith(".pt: file too large; nothing else was written: free space, or "
                         "--data-cache '' to keep the data in memory")
    assert list(cache.iterdir()) == []                    # no partial file left behind


# ---- one run per output folder --------------------------------------------------------------------

def test_a_second_run_on_a_locked_folder_refuses_before_touching_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = runtime.FolderLock(str(out))                   # this process is "the first run"
    try:
        proc = run("train.py", "--out", out, *SMALL)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert last_line(proc) == (f"train.py: error: --out {out} is in use by process "
                                   f"{os.getpid()} (another train.py on the same folder): wait "
                                   f"for it to end, or choose another --out")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
        assert "rendering" not in proc.stdout
    finally:
        lock.release()


def test_eval_reads_a_folder_while_a_run_holds_it(finished_run):
    out = finished_run
    lock = runtime.FolderLock(str(out))
    try:
        proc = run("eval.py", "--checkpoint", out, "--n-per-class", 3, "--n-retrieval", 10,
                   "--seeds", 1)
        assert proc.returncode == 0, proc.stderr
    finally:
        lock.release()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r}); from plumbing import runtime; "
            f"lock = runtime.FolderLock({str(out)!r}); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert (out / ".lock").read_text().strip().isdigit()  # its pid is still written there
    runtime.FolderLock(str(out)).release()               # the next run gets it at once
    assert (out / ".lock").read_text().strip() == str(os.getpid())


# ---- options checked when the arguments are read --------------------------------------------------

@pytest.mark.parametrize("option, make, message", [
    ("--out", lambda t: (t / "f").write_text("x") and t / "f", "{p}: {p} is a file, not a folder"),
    ("--out", lambda t: (t / "f").write_text("x") and t / "f" / "run",
     "{p}: {b} is a file, not a folder"),
    ("--data-cache", lambda t: (t / "f").write_text("x") and t / "f", "{p}: {p} is a file, not a folder"),
    ("--data-cache", lambda t: (t / "f").symlink_to(t / "gone") or t / "f",
     "{p}: {p} is a link to {t}/gone, which does not exist"),
])
def test_a_folder_option_that_cannot_be_a_folder(tmp_path, option, make, message):
    path = make(tmp_path)
    args = ["--out", tmp_path / "run", *SMALL] + [option, path]
    proc = run("train.py", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    want = message.format(p=path, b=tmp_path / "f", t=tmp_path)
    assert last_line(proc) == f"train.py: error: {option} {want}: choose another {option}"
    assert "rendering" not in proc.stdout


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write into a read-only folder")
def test_a_read_only_out_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = run("train.py", "--out", folder / "run", *SMALL)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "permission denied" in last_line(proc) and "--out" in last_line(proc)
    finally:
        folder.chmod(0o755)


def test_a_read_only_out_folder_by_its_permission_check(tmp_path, monkeypatch):
    """What a user without write permission sees (this test also runs as root: os.access is made
    to say no, as it does for them)."""
    monkeypatch.setattr(runtime.os, "access", lambda path, mode: False)
    with pytest.raises(runtime.InputError) as info:
        runtime.make_folder("--out", str(tmp_path / "run"))
    assert str(info.value) == (f"--out {tmp_path / 'run'}: no permission to write in "
                               f"{tmp_path / 'run'}: choose another --out")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    proc = run("train.py", "--out", out, *SMALL, "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    return out


def test_resume_without_the_tokenizer(finished_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "tokenizer.json").unlink()
    proc = run("train.py", "--out", out, *SMALL, "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc) == (
        f"train.py: error: --resume: {out / 'tokenizer.json'} is missing; the checkpoint's token "
        f"ids mean nothing without the tokenizer it was trained with: copy it back beside ckpt.pt")
    proc = run("eval.py", "--checkpoint", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc) == (f"eval.py: error: tokenizer not found: {out / 'tokenizer.json'} "
                               f"(train.py writes it beside ckpt.pt)")


def test_another_runs_tokenizer_is_refused(finished_run, tmp_path):
    """A tokenizer.json copied from a run with another vocabulary would index other embedding
    rows (or none: an IndexError deep in the model)."""
    import data
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    texts = [f"report number {i} with words {i % 7} and {i % 11}" for i in range(50)]
    data.train_tokenizer(texts, 120).save(str(out / "tokenizer.json"))
    proc = run("eval.py", "--checkpoint", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "it is another run's tokenizer" in last_line(proc)
    proc = run("train.py", "--out", out, *SMALL, "--steps", "2", "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc).endswith("it is another run's tokenizer")


@pytest.mark.parametrize("flag", ["--json", "--show"])
def test_eval_output_that_cannot_be_written_is_refused_before_evaluating(finished_run, tmp_path, flag,
                                                                         capsys):
    (tmp_path / "f").write_text("x")
    import eval as evaluation
    for target, message in [
            (tmp_path / "f" / "out", f"{tmp_path / 'f'} is a file, not a folder: choose another {flag}"),
            (tmp_path, None)]:
        with pytest.raises(SystemExit) as info:
            evaluation.main(["--checkpoint", str(finished_run), flag, str(target)])
        err = capsys.readouterr()
        assert info.value.code == 2 and "loaded" not in err.out
        assert err.err.strip() == (f"eval.py: error: {flag} {target}: {message}" if message else
                                   f"eval.py: error: {flag} {target} is a folder: give a file name")


def test_eval_of_a_clip_checkpoint_with_use_teacher(finished_run, tmp_path):
    out = tmp_path / "clip"
    shutil.copytree(finished_run, out)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["teacher"] = None                                # what a --method clip run saves
    torch.save(ckpt, out / "ckpt.pt")
    proc = run("eval.py", "--checkpoint", out, "--use-teacher")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc) == (f"eval.py: error: {out / 'ckpt.pt'} is not a train.py checkpoint "
                               f"with a teacher: no EMA teacher (a --method clip run has none)")
