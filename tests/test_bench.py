"""The timing tools, bench.py and profile_step.py: the arithmetic on hand-made numbers (medians,
ratios, shares, the tables), bench.py's device, precision and loss scaler (runtime.py's), and one
real measurement of each on a tiny configuration. No timing assertions. (ablation.py's tests are in
test_ablation.py.)"""

import json
import os
import subprocess
import sys

import pytest

import bench
from test_ablation import check_help_opens_with_a_full_sentence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a file in a folder (experiments/profile_step.py) runs as a module, as the README says
    target = ["-m", script[:-3].replace("/", ".")] if "/" in script else [os.path.join(ROOT, script)]
    proc = subprocess.run([sys.executable, *target, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


# -----------------------------------------------------------------------------
# bench.py: pure parts

def test_summarise_takes_the_median_step_per_sample():
    s = bench.summarise([1.0, 9.0, 2.0], samples_per_step=10)     # median 2 s, range 1..9 s
    assert s["s_per_step"] == 2.0
    assert s["ms_per_sample"] == pytest.approx(200.0)
    assert s["samples_per_s"] == pytest.approx(5.0)
    assert s["spread_ms_per_sample"] == pytest.approx(400.0)      # (9 - 1) / 2 / 10 samples


def test_negatives_per_row():
    assert bench.negatives_per_row("clip", b=32, k=4, queue_size=0) == 127
    assert bench.negatives_per_row("clip-naive", b=32, k=4, queue_size=0) == 31      # still b - 1
    assert bench.negatives_per_row("clip-exact", b=32, k=4, queue_size=0) == 127     # the window's
    assert bench.negatives_per_row("msd", b=32, k=4, queue_size=0) == 127            # train.py's default
    assert bench.negatives_per_row("msd-queue", b=32, k=4, queue_size=2048) == 128 + 2048 - 1


def test_msd_is_timed_as_train_py_runs_it_and_with_a_queue_as_its_own_rows():
    import train
    train_defaults = train.get_args([])[1]
    args = bench.parse_args([])[1]
    assert args.queue_size == train_defaults.queue_size == 0          # the msd rows: no queue
    assert args.queue_size_extra == 2048                               # the msd-queue rows
    assert (bench.MOMENTUM, bench.ALPHA) == (train_defaults.momentum, train_defaults.alpha)
    assert args.batch_size == train_defaults.batch_size
    assert bench.make_plan([1, 2], 0, 2048) == [
        ("clip", 1, 0), ("clip", 2, 0), ("clip-naive", 2, 0), ("clip-exact", 1, 0), ("clip-exact", 2, 0),
        ("msd", 1, 0), ("msd", 2, 0), ("msd-queue", 1, 2048), ("msd-queue", 2, 2048)]
    assert [kind for kind, _, _ in bench.make_plan([1], 0, 0)] == ["clip", "clip-exact", "msd"]


def test_command_line(capsys):
    # the README's commands parse; an option bench.py does not have (--no-data) is refused
    assert bench.parse_args(["--json", "results/bench.json"])[1].json == "results/bench.json"
    assert bench.parse_args(["--ks", "4,1"])[1].ks == [1, 4]
    assert bench.parse_args(["--compile", "--ks", "4"])[1].compile
    assert bench.parse_args(["--queue-size-extra", "0"])[1].queue_size_extra == 0   # no msd-queue rows
    for argv, message in ((["--no-data"], "unrecognized arguments: --no-data"),
                          (["--queue-size", "64", "--queue-size-extra", "64"], "repeats --queue-size"),
                          (["--queue-size", "-1"], "the queue sizes >= 0"),
                          (["--ks", "1,x"], "--ks must be comma-separated integers")):
        with pytest.raises(SystemExit) as exit_:
            bench.parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exit_:            # runtime.pick_device's one line, before any child
        bench.main(["--device", "nonsense"])
    assert exit_.value.code == 2 and "nonsense: not a device name" in capsys.readouterr().err


def hand_made_rows():
    ok = lambda kind, k, ms, mb, queue=0: {"kind": kind, "k": k, "b": 32, "queue": queue,  # noqa: E731
                                           "status": "ok", "ms_per_sample": ms,
                                           "samples_per_s": 1000 / ms, "peak_mb": mb}
    return [ok("clip", 1, 10.0, 100.0), ok("clip", 2, 9.0, 180.0),
            {"kind": "clip", "k": 4, "b": 32, "queue": 0, "status": "OOM"},
            ok("clip-naive", 2, 10.5, 104.0), ok("clip-naive", 4, 10.5, 106.0),
            ok("clip-exact", 1, 10.0, 101.0), ok("clip-exact", 2, 13.0, 115.0),
            ok("clip-exact", 4, 12.5, 125.0),
            ok("msd", 1, 13.0, 110.0), ok("msd", 2, 13.5, 120.0), ok("msd", 4, 14.0, 132.0),
            ok("msd-queue", 1, 15.0, 118.0, 2048), ok("msd-queue", 2, 14.5, 125.0, 2048),
            {"kind": "msd-queue", "k": 4, "b": 32, "queue": 2048, "status": "error", "error": "boom"}]


def test_ratios_against_baselines_of_the_same_run():
    r = bench.compute_ratios(hand_made_rows(), [1, 2, 4])
    assert set(r) == set(bench.RATIOS)
    assert r["msd_time_vs_clip_b"] == pytest.approx({"1": 1.3, "2": 1.35, "4": 1.4})
    assert r["msd_queue_time_vs_clip_b"]["1"] == pytest.approx(1.5)
    assert r["msd_queue_time_vs_clip_b"]["2"] == pytest.approx(1.45)
    assert r["msd_queue_time_vs_clip_b"]["4"] is None                # that row failed
    assert r["msd_mem_vs_k1"] == pytest.approx({"1": 1.0, "2": 120 / 110, "4": 1.2})  # the queue-0 rows
    assert r["clip_kb_mem_vs_msd"]["1"] == pytest.approx(100 / 110)
    assert r["clip_kb_mem_vs_msd"]["2"] == pytest.approx(1.5)
    assert r["clip_kb_mem_vs_msd"]["4"] is None                      # CLIP at 4·b ran out of memory
    assert r["exact_time_vs_clip_b"] == pytest.approx({"1": 1.0, "2": 1.3, "4": 1.25})
    assert r["exact_mem_vs_clip_kb"]["1"] == pytest.approx(1.01)
    assert r["exact_mem_vs_clip_kb"]["2"] == pytest.approx(115 / 180)
    assert r["exact_mem_vs_clip_kb"]["4"] is None


def test_ratios_without_a_baseline_are_none():
    rows = [r for r in hand_made_rows() if not (r["kind"] == "clip" and r["k"] == 1)]
    r = bench.compute_ratios(rows, [1, 2])
    assert r["msd_time_vs_clip_b"] == {"1": None, "2": None}
    assert r["msd_queue_time_vs_clip_b"] == {"1": None, "2": None}
    assert r["exact_time_vs_clip_b"] == {"1": None, "2": None}
    assert r["msd_mem_vs_k1"]["2"] == pytest.approx(120 / 110)


def test_markdown_table_holds_the_numbers_and_names_each_queue():
    rows = hand_made_rows()
    table = bench.format_table(rows, bench.compute_ratios(rows, [1, 2, 4]), [1, 2, 4], b=32,
                               queue_size=0, queue_size_extra=2048, memory_note="a note")
    lines = table.splitlines()
    assert "| CLIP, batch b | 1 × 32 | 31 | 10 | 100 | 100 | 1.00 | – | n/a |" in lines
    assert "| CLIP, batch k·b | 1 × 128 | 127 | OOM |  |  |  |  |  |" in lines
    assert "| CLIP naive accumulation k×b | 4 × 32 | 31 | 10.5 | 95 | 106 | 1.05 | – | n/a |" in lines
    assert "| CLIP exact k×b (feature cache) | 2 × 32 | 63 | 13 | 77 | 115 | 1.30 | – | n/a |" in lines
    assert "| MSD k×b, queue 0 | 4 × 32 | 127 | 14 | 71 | 132 | 1.40 | – | n/a |" in lines
    assert "| MSD k×b, queue 2048 | 2 × 32 | 2111 | 14.5 | 69 | 125 | 1.45 | – | n/a |" in lines
    assert "| MSD k×b, queue 2048 | 4 × 32 | 2175 | error |  |  |  |  |  |" in lines
    # the rows in make_plan's order: every queue-0 MSD row before the queue-2048 ones
    names = [line.split(" | ")[0] for line in lines[2:lines.index("")]]
    assert names.index("| MSD k×b, queue 2048") == names.index("| MSD k×b, queue 0") + 3
    header = lines[lines.index("") + 1]
    assert header == ("| k | window N = k·b | MSD (queue 0) time / CLIP b time | MSD (queue 2048) time / "
                      "CLIP b time | MSD (queue 0) memory / at k=1 | CLIP k·b memory / MSD (queue 0) k×b "
                      "memory | exact time / CLIP b time | exact memory / CLIP k·b memory |")
    assert "| 4 | 128 | 1.40 | – | 1.20 | – | 1.25 | – |" in lines       # the ratios per k
    assert "| 2 | 64 | 1.35 | 1.45 | 1.09 | 1.50 | 1.30 | 0.64 |" in lines
    assert lines[-1] == "a note"
    for block in (lines[:lines.index("")], lines[lines.index("") + 1:-2]):   # as many cells as the header
        assert len({line.count("|") for line in block}) == 1


def test_peak_tflops_lookup():
    assert bench.peak_tflops_for("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert bench.peak_tflops_for("NVIDIA H100 PCIe", "bf16") == 756
    assert bench.peak_tflops_for("NVIDIA H200", "bf16") == 989
    assert bench.peak_tflops_for("NVIDIA A100-SXM4-80GB", "bf16") == 312
    assert bench.peak_tflops_for("NVIDIA GeForce RTX 4090", "bf16") == 165
    assert bench.peak_tflops_for("Some Card", "bf16") is None
    assert bench.peak_tflops_for("NVIDIA H100 80GB HBM3", "fp32") is None   # a different peak
    assert bench.peak_tflops_for(None, "fp32", override=50.0) == 50.0


def test_flops_are_three_forwards_for_clip_and_four_for_msd_and_the_feature_cache():
    achieved, mfu = bench.flop_figures("clip", 1e9, samples_per_s=1000, peak_tflops=10)
    assert achieved == pytest.approx(3.0) and mfu == pytest.approx(0.3)
    achieved, mfu = bench.flop_figures("msd", 1e9, samples_per_s=1000, peak_tflops=None)
    assert achieved == pytest.approx(4.0) and mfu is None
    assert bench.flop_figures("msd-queue", 1e9, 1000, None)[0] == pytest.approx(4.0)
    assert bench.flop_figures("clip-exact", 1e9, 1000, None, k=4)[0] == pytest.approx(4.0)
    assert bench.flop_figures("clip-exact", 1e9, 1000, None, k=1)[0] == pytest.approx(3.0)  # no cache
    assert bench.flop_figures("clip-naive", 1e9, 1000, None, k=4)[0] == pytest.approx(3.0)


def test_flop_counter_sees_every_matrix_product():
    """The tiny preset's forward, counted on the meta device, against the transformer formula:
    per layer 2·L·W·3W (qkv) + 2·L·W·W (proj) + 2·2·L·W·4W (MLP) + 2·2·L²·W (attention), plus the
    convolutional stem: per stride-2 3x3 stage 2·(side/2^i)²·9·c_in·c_out, then a 1x1 to W."""
    from model import make_config

    cfg = make_config("tiny")
    L_img = (cfg.image_size // cfg.patch_size) ** 2 + (cfg.pool == "cls")  # + class token

    def layers(L, W, n):
        return n * (2 * L * W * 3 * W + 2 * L * W * W + 2 * 2 * L * W * 4 * W + 2 * 2 * L * L * W)

    n_stages = cfg.patch_size.bit_length() - 1
    chans = [cfg.in_channels] + [cfg.vision_width >> (n_stages - i) for i in range(1, n_stages + 1)]
    stem = sum(2 * (cfg.image_size >> i) ** 2 * 9 * chans[i - 1] * chans[i]
               for i in range(1, n_stages + 1))
    stem += 2 * (cfg.image_size // cfg.patch_size) ** 2 * chans[-1] * cfg.vision_width
    formula = stem + layers(L_img, cfg.vision_width, cfg.vision_layers) + \
        layers(cfg.context_length, cfg.text_width, cfg.text_layers)
    counted = bench.count_forward_flops(cfg)
    # the rest (projections) is under 1%; missing attention would be 15% off, the stem 10%
    assert formula < counted < 1.01 * formula


# -----------------------------------------------------------------------------
# bench.py: device, precision and memory as the rest of the repository measures them

def one_config(**overrides):
    return {**vars(bench.parse_args(["--one", "{}"])[1]), "kind": "msd", "k": 2, "batch_size": 2,
            "image_size": 32, "repeats": 1, "warmup": 1, "queue_size": 0, **overrides}


def test_precision_is_runtimes_rule_fp16_with_a_scaler_on_a_card_without_native_bf16(monkeypatch):
    import warnings

    import torch

    from plumbing import runtime
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)          # a CUDA card...
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))   # ...a T4
    monkeypatch.setattr(torch.version, "hip", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device, _, scaler, precision, _ = bench._setup(one_config(device="auto", precision="auto"))
        assert precision == runtime.pick_precision("auto", device)[2] == "fp16"   # not fp32
    assert device.type == "cuda" and isinstance(scaler, torch.amp.GradScaler)
    assert bench._setup(one_config(device="cpu"))[2:4] == (None, "fp32")
    # and it is runtime's function that decides, not a copy of its rule
    sentinel = (object(), object(), "from runtime")
    monkeypatch.setattr(runtime, "pick_precision", lambda precision, device: sentinel)
    assert bench._setup(one_config(device="cpu"))[1:4] == sentinel


@pytest.mark.parametrize("kind", ["clip", "clip-naive", "clip-exact", "msd"])
def test_every_step_gets_the_loss_scaler(kind, monkeypatch):
    import contextlib

    from plumbing import runtime

    class Scaler:                                 # a GradScaler that counts and does not scale
        steps = 0

        def scale(self, loss):
            return loss

        def unscale_(self, optimizer):
            pass

        def step(self, optimizer):
            Scaler.steps += 1
            optimizer.step()

        def update(self):
            pass

    monkeypatch.setattr(runtime, "pick_precision", lambda p, d: (contextlib.nullcontext(), Scaler(), "fp16"))
    monkeypatch.setattr(bench, "reset_peak_rss", lambda: 0.0)    # leave pytest's own peak alone
    out = bench.measure_step(one_config(kind=kind, device="cpu", queue_size=8 if kind == "msd" else 0))
    assert not out["oom"] and out["precision"] == "fp16"
    assert Scaler.steps == 2                        # the warm-up step and the timed one


def test_imports_without_the_unix_only_resource_module(monkeypatch):
    import importlib
    monkeypatch.setitem(sys.modules, "resource", None)     # as on Windows: `import resource` fails
    with pytest.raises(ImportError):
        import resource  # noqa: F401
    monkeypatch.delitem(sys.modules, "bench")              # both restored after the test
    monkeypatch.delitem(sys.modules, "plumbing.runtime")
    fresh = importlib.import_module("bench")
    assert fresh is not bench and fresh.parse_args([])[1].queue_size == 0
    if os.path.exists("/proc/self/status"):               # Linux: the peak without `resource`
        assert fresh.reset_peak_rss() > 0


# -----------------------------------------------------------------------------
# bench.py: one real measurement in a fresh process

@pytest.mark.parametrize("kind,queue", [("msd", 16), ("clip-exact", 0)])
def test_one_configuration_reports_time_and_memory(kind, queue):
    cfg = {"kind": kind, "preset": "tiny", "image_size": 32, "batch_size": 4, "k": 2, "repeats": 1,
           "warmup": 0, "queue_size": queue, "device": "cpu"}
    proc = run("bench.py", "--one", json.dumps(cfg))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench_one"] and not out["oom"] and out["precision"] == "fp32"
    assert len(out["times"]) == 1 and out["times"][0] > 0
    assert out["peak_mb"] > 0 and out["process_peak_mb"] >= out["peak_mb"]
    assert {key: out["config"][key] for key in ("k", "batch_size", "kind", "queue_size")} == \
        {"k": 2, "batch_size": 4, "kind": kind, "queue_size": queue}


def test_an_unknown_kind_is_refused():
    proc = run("bench.py", "--one", json.dumps({"kind": "data"}), check=False)
    assert proc.returncode == 2 and "unknown kind 'data'" in proc.stderr   # profile_step.py times the input


# -----------------------------------------------------------------------------
# profile_step.py: the parts its docstring promises, and the table's arithmetic

def test_profile_help_opens_with_a_full_sentence(capsys):
    from experiments import profile_step
    check_help_opens_with_a_full_sentence(profile_step, profile_step.parse_args, capsys)


def test_profile_report_shares_and_order():
    from experiments import profile_step
    parts = {"a": 0.010, "b": 0.030, "c": 0.020}
    lines = profile_step.format_report(0.080, parts, N=128).splitlines()
    body = [line.split() for line in lines[2:5]]
    assert [row[0] for row in body] == ["b", "c", "a"]                  # largest first
    assert [row[-1] for row in body] == ["37.5%", "25.0%", "12.5%"]      # part / whole step
    assert "75.0%" in lines[6] and "60.0" in lines[6]                    # the sum: 60 ms of 80
    assert "1600 samples/s" in lines[7]                                 # 128 / 0.080


def test_profile_measures_the_parts_its_docstring_lists(tmp_path):
    from experiments import profile_step
    out = tmp_path / "profile.json"
    run("experiments/profile_step.py", "--batch-size", "4", "--accum-steps", "2", "--queue-size", "8",
        "--repeats", "1", "--warmup", "0", "--json", str(out))
    result = json.loads(out.read_text())
    documented = [line.strip().split("   ")[0] for line in profile_step.__doc__.splitlines()
                  if line.startswith("    ") and not line.strip().startswith("python")]
    assert sorted(result["parts_s"]) == sorted(documented)
    assert result["window"] == 8 and result["step_s"] > 0
    assert all(v > 0 for v in result["parts_s"].values())
