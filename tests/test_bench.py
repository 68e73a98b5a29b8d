"""bench.py and ablation.py: the arithmetic on hand-made numbers (medians, ratios, mean ± spread,
the tables), the ablation's commands (same samples, warm-ups and teacher horizon in every arm),
bench.py's device, precision and loss scaler (runtime.py's), and one real bench.py --one
measurement on a tiny configuration. No timing assertions."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from experiments import ablation
from experiments import studies
import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a file in a folder (experiments/ablation.py) runs as a module, as the README says
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
    from plumbing import options
    train_defaults = options.get_args([])[1]
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
    # the README's commands parse; the input-pipeline measurement (--no-data) is gone
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


def test_precision_is_runtimes_rule_fp16_with_a_scaler_on_a_cuda_card_without_bf16(monkeypatch):
    import warnings

    import torch

    from plumbing import runtime
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)          # a CUDA card...
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)   # ...without bf16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device, _, scaler, precision, _ = bench._setup(one_config(device="auto", precision="auto"))
        assert precision == runtime.pick_precision("auto", device)[2] == "fp16"   # the old rule: fp32
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


def test_the_input_pipeline_kind_is_gone():
    proc = run("bench.py", "--one", json.dumps({"kind": "data"}), check=False)
    assert proc.returncode == 2 and "unknown kind 'data'" in proc.stderr   # profile_step.py measures it


# -----------------------------------------------------------------------------
# ablation.py

def option(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_dry_run_every_arm_sees_the_same_samples_warm_ups_and_teacher_horizon():
    proc = run("experiments/ablation.py", "--dry-run", "--seeds", "0,1", "--batch-size", "8",
               "--accum-steps", "4", "--steps", "30", "--only", ",".join(ablation.ARMS),
               "--extra=--image-size 32")
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if ".py" in line and "--" in line]
    cmds = [c for c in lines if c[1].endswith("train.py")]
    n_arms = len(ablation.ARMS)
    assert len(cmds) == 2 * n_arms
    for seed in (0, 1):
        arms = [c for c in cmds if option(c, "--seed") == str(seed)]
        assert len(arms) == n_arms
        for c in arms:                                   # every option once: no silent override
            names = [t for t in c if t.startswith("--")]
            assert len(names) == len(set(names)), c
        samples = {int(option(c, "--steps")) * int(option(c, "--batch-size")) *
                   int(option(c, "--accum-steps")) for c in arms}
        assert samples == {30 * 4 * 8}
        # warm-ups over the same number of samples in every arm
        warm = {int(option(c, "--warmup-steps")) * int(option(c, "--batch-size")) *
                int(option(c, "--accum-steps")) for c in arms}
        assert len(warm) == 1
        by_arm = {os.path.basename(option(c, "--out")).split("-")[0]: c for c in arms}
        # the teacher averages over the same number of samples: m^steps is the same (arms d, e, f)
        horizons = {round(float(option(by_arm[a], "--momentum")) ** int(option(by_arm[a], "--steps")), 4)
                    for a in "def"}
        assert len(horizons) == 1
        assert [a for a in by_arm if option(by_arm[a], "--alpha") == "0"] == ["d"]
        assert all(option(c, "--eval-every") == "0" and option(c, "--image-size") == "32" for c in arms)
        # the remedies: each differs from arm e by its own options only
        assert option(by_arm["q"], "--queue-start") == "5"                  # S/6 of 30 steps
        # the other teacher arms keep the queue from step 0 whatever train.py's default becomes
        assert all(option(by_arm[a], "--queue-start") == "0" for a in "defhmw")
        # the queue the recorded arms trained with, now that train.py's default is none
        assert all(option(by_arm[a], "--queue-size") == "auto" for a in "defhmwq")
        assert option(by_arm["h"], "--momentum-half-life") == "0.05"
        assert (option(by_arm["m"], "--momentum-schedule"), option(by_arm["m"], "--momentum")) == ("cosine", "0.99")
        assert option(by_arm["w"], "--alpha-warmup") == "15"                # S/2
        for arm in "qhmw":
            differ = {n for n in set(by_arm[arm]) | set(by_arm["e"]) if n.startswith("--")
                      and option(by_arm[arm], n) != option(by_arm["e"], n)}
            assert differ == {"--out"} | set(ablation.ARMS[arm][5][::2]), arm
    # the three CLIP arms at k×b: one batch of k·b, naive accumulation, exact accumulation
    by_run = {os.path.basename(option(c, "--out")): c for c in cmds}
    shape = lambda c: (option(c, "--method"), option(c, "--batch-size"), option(c, "--accum-steps"))  # noqa: E731
    assert shape(by_run["b-seed0"]) == ("clip", "32", "1")
    assert shape(by_run["c-seed0"]) == ("clip-naive", "8", "4")
    assert shape(by_run["g-seed0"]) == ("clip", "8", "4")
    # the arms with a teacher are evaluated with its weights too, on their own checkpoint
    teachers = [c for c in lines if c[1].endswith("eval.py") and "--use-teacher" in c]
    assert {option(c, "--checkpoint") for c in teachers} == \
        {option(c, "--out") for c in cmds if option(c, "--method") == "msd"}
    # and every run's student on the second evaluation set, synthetic.py's SECOND_EVAL_SEED
    from synthetic import dataset as synthetic
    seconds = [c for c in lines if c[1].endswith("eval.py") and "--use-teacher" not in c]
    assert sorted(option(c, "--checkpoint") for c in seconds) == sorted(option(c, "--out") for c in cmds)
    assert {option(c, "--eval-seed") for c in seconds} == {str(synthetic.SECOND_EVAL_SEED)}


def test_extra_may_not_change_what_the_arms_compare():
    proc = run("experiments/ablation.py", "--dry-run", "--extra=--steps 5", check=False)
    assert proc.returncode == 2 and "--steps" in proc.stderr


def test_mean_std_and_format():
    assert ablation.mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    assert ablation.mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert ablation.mean_std([None, 0.4]) == (0.4, None)
    assert ablation.mean_std([]) == (None, None)
    assert ablation.fmt_mean_std([0.5, 0.6, 0.7]) == "0.600 ± 0.100"
    assert ablation.fmt_mean_std([0.5]) == "0.500"
    assert ablation.fmt_mean_std([None]) == "–"
    assert ablation.fmt_mean_std([1000.4, 1100.2, 1200.0], digits=0) == "1100 ± 100"


def fake_eval(acc):
    return {"zero_shot": {"accuracy": acc, "auc": acc + 0.2},
            "few_shot": {"1": 0.6, "2": 0.7, "16": 0.9},
            "retrieval": {"i2t_r1": 0.1, "i2t_r5": 0.3, "i2t_r10": 0.5,
                          "t2i_r1": 0.2, "t2i_r5": 0.4, "t2i_r10": acc}}


def fake_metrics(peak, elapsed):
    return [{"step": 10, "loss": 1.0, "peak_mem_mb": peak / 2, "elapsed_s": elapsed / 2},
            {"step": 20, "zero_shot_accuracy": 0.3, "zero_shot_auc": 0.6},
            {"step": 20, "loss": 0.9, "peak_mem_mb": peak, "elapsed_s": elapsed}]


def test_summaries_aggregate_table_and_comparison():
    runs = {"e": {s: ablation.summarise_run(fake_eval(acc), fake_metrics(peak, sec), fake_eval(acc + 0.1),
                                            fake_eval(acc + 0.05))
                  for s, acc, peak, sec in ((0, 0.5, 300, 120), (1, 0.6, 400, 180), (2, 0.7, 500, 240))},
            "b": {0: ablation.summarise_run(fake_eval(0.4), fake_metrics(900, 60))}}
    assert runs["e"][0]["peak_mem_mb"] == 300 and runs["e"][0]["train_min"] == pytest.approx(2.0)
    assert runs["e"][0]["teacher_zero_shot_accuracy"] == pytest.approx(0.6)
    assert "teacher_zero_shot_accuracy" not in runs["b"][0]
    agg = ablation.aggregate(runs)
    assert agg["e"]["zero_shot_accuracy"] == pytest.approx({"mean": 0.6, "std": 0.1, "n": 3})
    assert agg["e"]["teacher_zero_shot_accuracy"] == pytest.approx({"mean": 0.7, "std": 0.1, "n": 3})
    assert agg["b"]["peak_mem_mb"] == {"mean": 900, "std": None, "n": 1}
    table = ablation.format_table(runs, ["b", "e", "f"], b=16, k=8)
    lines = table.splitlines()
    row_e = next(line for line in lines if line.startswith("| e |"))
    assert row_e == ("| e | MSD, k×b, queue from step 0 | 16 × 8 | 3 | 0.600 ± 0.100 | 0.800 ± 0.100 | 0.600 ± 0.000 "
                     "| 0.900 ± 0.000 | 0.100 ± 0.000 | 0.500 ± 0.000 | 0.200 ± 0.000 "
                     "| 0.600 ± 0.100 | 0.650 ± 0.100 | 400 ± 100 | 3.0 ± 1.0 |")
    row_t = next(line for line in lines if line.startswith("| e (teacher) |"))
    assert row_t.startswith("| e (teacher) | its EMA weights | 16 × 8 | 3 | 0.700 ± 0.100 | 0.900 ± 0.100 |")
    assert row_t.endswith("| – |  |  |")      # memory and time are the run's, on its own row; 2nd set: student
    assert next(line for line in lines if line.startswith("| b |")).startswith(
        "| b | CLIP, batch k·b | 128 × 1 | 1 | 0.400 |")
    assert not any(line.startswith("| b (teacher)") for line in lines)
    assert next(line for line in lines if line.startswith("| f |")).count("–") == 11   # not run
    assert len({line.count("|") for line in lines}) == 1
    # e - b is not comparable (one seed of b); with two seeds of b at 0.35 ± 0.07 it is
    assert ablation.compare(runs, "e", "b") is None
    runs["b"][1] = ablation.summarise_run(fake_eval(0.3), fake_metrics(900, 60))
    diff, spread, beyond = ablation.compare(runs, "e", "b")
    assert diff == pytest.approx(0.25) and spread == pytest.approx(0.1) and beyond


def finished_run(folder, acc, teacher_acc=None, second=True):
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(fake_eval(acc)))
    if second:
        (folder / "eval_second.json").write_text(json.dumps(fake_eval(acc + 0.01)))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fake_metrics(300, 120)))
    if teacher_acc is not None:
        (folder / "eval_teacher.json").write_text(json.dumps(fake_eval(teacher_acc)))


def test_finished_runs_are_recorded_and_the_report_alone_is_enough_to_skip_them(tmp_path, capsys):
    for seed, acc in ((0, 0.5), (1, 0.7)):
        finished_run(tmp_path / "runs" / f"e-seed{seed}", acc, acc + 0.05)
    report = tmp_path / "ablation.json"
    args = ["--only", "e", "--seeds", "0,1", "--out-dir", str(tmp_path / "runs"), "--json", str(report)]
    assert ablation.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("eval.json exists") == 2
    assert "| e | MSD, k×b, queue from step 0 | 32 × 4 | 2 | 0.600 ± 0.141 |" in printed
    assert "| e (teacher) | its EMA weights | 32 × 4 | 2 | 0.650 ± 0.141 |" in printed
    saved = json.loads(report.read_text())
    assert saved["aggregate"]["e"]["zero_shot_accuracy"]["mean"] == pytest.approx(0.6)
    assert set(saved["records"]) == {"e-seed0", "e-seed1"}
    record = saved["records"]["e-seed0"]
    assert "--method msd" in record["command"] and record["machine"] and record["date"]
    # a new machine keeps only the repository: the run folders are gone, the report is enough
    (tmp_path / "runs").rename(tmp_path / "gone")
    assert ablation.main(args) == 0
    assert capsys.readouterr().out.count(f"in {report} already") == 2
    # a report of other settings is refused rather than mixed with these
    assert ablation.main(args + ["--steps", "300"]) == 2
    assert "holds runs with other settings" in capsys.readouterr().err


def test_runs_recorded_before_the_second_set_get_it_when_their_folder_is_there(tmp_path, capsys,
                                                                              monkeypatch):
    for seed in (0, 1):
        finished_run(tmp_path / "runs" / f"g-seed{seed}", 0.9 + seed / 100, second=False)
    report = tmp_path / "ablation.json"
    args = ["--only", "g", "--seeds", "0,1", "--out-dir", str(tmp_path / "runs"), "--json", str(report)]
    with monkeypatch.context() as m:                      # record them as an older ablation.py did,
        m.setattr(studies, "evaluate_more", lambda *a: None)   # which evaluated nothing more
        assert ablation.main(args) == 0
    before = json.loads(report.read_text())
    assert "second_zero_shot_accuracy" not in before["records"]["g-seed0"]["summary"]
    # now seed 0's second evaluation is there (as eval.py would write it); seed 1's folder is gone
    (tmp_path / "runs" / "g-seed0" / "eval_second.json").write_text(json.dumps(fake_eval(0.77)))
    shutil.rmtree(tmp_path / "runs" / "g-seed1")
    capsys.readouterr()
    assert ablation.main(args) == 0
    assert "g seed 0: added the second evaluation set: zero-shot accuracy 0.770" in capsys.readouterr().out
    after = json.loads(report.read_text())["records"]
    assert after["g-seed0"]["summary"]["second_zero_shot_accuracy"] == 0.77
    assert after["g-seed0"]["summary"]["zero_shot_accuracy"] == 0.9          # the rest untouched
    assert after["g-seed0"]["commit"] == before["records"]["g-seed0"]["commit"]
    assert "second_zero_shot_accuracy" not in after["g-seed1"]["summary"]


def test_report_prints_the_recorded_runs_and_their_comparisons_without_running(tmp_path, capsys):
    for arm, accs in (("e", (0.5, 0.7)), ("q", (0.80, 0.82)), ("g", (0.9, 0.6))):
        for seed, acc in enumerate(accs):
            finished_run(tmp_path / "runs" / f"{arm}-seed{seed}", acc, acc - 0.1 if arm != "g" else None)
    report = tmp_path / "ablation.json"
    assert ablation.main(["--only", "e,q,g", "--seeds", "0,1", "--out-dir", str(tmp_path / "runs"),
                          "--json", str(report)]) == 0
    capsys.readouterr()
    (tmp_path / "runs").rename(tmp_path / "gone")        # --report needs the JSON alone
    assert ablation.main(["--report", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "6 runs recorded" in out
    assert "| q | MSD k×b, queue after the warm-up (default ea80c34 to 53a704d) | 32 × 4 | 2 | 0.810 ± 0.014 |" in out
    # q - e = 0.81 - 0.60 = +0.21 against e's spread 0.141: beyond; q - g = +0.06 against 0.212: within
    assert "zero_shot_accuracy q - e: +0.210 (beyond the larger standard deviation, 0.141)" in out
    assert "zero_shot_accuracy q - g: +0.060 (within the larger standard deviation, 0.212)" in out
    assert "e - g" in out and "e - a" not in out                  # a has no runs
    assert "  q  0: 0.800, 1: 0.820; 0: 0.700, 1: 0.720; 0: 0.810, 1: 0.830" in out   # per seed
    assert "  g  0: 0.900, 1: 0.600; –; 0: 0.910, 1: 0.610" in out
    assert ablation.main(["--report", "--json", str(tmp_path / "none.json")]) == 2
    assert "no report at" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# profile_step.py: the parts its docstring promises, and the table's arithmetic

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
