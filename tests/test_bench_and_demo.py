"""The benchmark and the demo end to end, on tiny sizes: they run, and what they report holds."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import softiou_cuda

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

pytestmark = pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                                reason="the C++ extension is not built")


def test_benchmark_quick_sweep(tmp_path):
    from bench.run import main
    main(["--device", "cpu", "--sweep", "quick", "--reps", "2", "--warmup", "1",
          "--providers", "softiou-cpu,reference-eager,cross_entropy", "--out", str(tmp_path),
          "--tag", "t"])
    report = json.load(open(tmp_path / "t.json"))
    assert report["machine"]["torch"] == torch.__version__ and report["copy_bandwidth_GBps"] > 0
    timed = [r for r in report["results"] if "timing" in r]
    assert {r["provider"] for r in timed} == {"softiou-cpu", "reference-eager", "cross_entropy"}
    for r in timed:
        assert r["check"]["ok"], r
        for d in ("forward", "backward", "forward+backward"):
            t = r["timing"][d]
            assert t["median_ms"] > 0 and t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]
            assert t["fraction_of_copy_bandwidth"] > 0
        # one process per case: peak memory measured, at least the gradient for the fused loss
        if r["provider"] == "softiou-cpu" and r["case"] == "quick":
            assert r["peak_extra_bytes"] is not None
        assert r["dispatcher_ops"] > 0 and r["kernel_launches"] is None  # CPU: no launches
    # the per-call group: one thread, the dispatcher ops of a call, the time against cross-entropy
    call = report["bars"]["per-call"]["quick-call-softiou-cpu"]
    assert call["threads"] == 1 and call["dispatcher_ops"] <= 16
    assert call["time_over_cross_entropy"] > 0
    assert (tmp_path / "t-time.png").exists() and (tmp_path / "t.txt").exists()


def test_benchmark_counts_group(tmp_path):
    """The loss with its hard counts, the loss alone and the loss plus torchmetrics' separate
    pass, timed in one run and summarised in the report."""
    from bench.run import main
    main(["--device", "cpu", "--sweep", "quick", "--cases", "quick-counts", "--reps", "2",
          "--warmup", "1", "--providers",
          "softiou-cpu,softiou-cpu-without-counts,softiou-cpu+torchmetrics", "--no-memory",
          "--out", str(tmp_path), "--tag", "c"])
    report = json.load(open(tmp_path / "c.json"))
    timed = {r["provider"]: r for r in report["results"] if "timing" in r}
    assert set(timed) == {"softiou-cpu", "softiou-cpu-without-counts", "softiou-cpu+torchmetrics"}
    assert all(r["check"]["ok"] for r in timed.values())
    counts = report["bars"]["counts"]["quick-counts-cpu"]
    assert counts["time_over_loss_alone"] > 0 and counts["time_over_loss_and_torchmetrics"] > 0
    assert counts["time_over_loss_alone_paired"] > 0


def test_paired_ratio_is_the_median_of_the_rounds_ratios():
    from bench.report import paired_ratio

    def rec(times):
        return {"timing": {"forward+backward": {"rounds_ms": times}}}
    assert paired_ratio(rec([1.5, 3.0, 2.0]), rec([1.0, 1.0, 1.0])) == 2.0
    # the machine 4x slower in rounds 3-4, and in round 5 for one side: 1.1 in four rounds of
    # five, where the medians' ratio is 4.4 / 1.0
    me, alone = rec([1.1, 1.1, 4.4, 4.4, 4.4]), rec([1.0, 1.0, 4.0, 4.0, 1.0])
    assert paired_ratio(me, alone) == pytest.approx(1.1)
    assert paired_ratio(me, rec([1.0])) is None and paired_ratio(me, None) is None


def test_benchmark_channels_last_case():
    """The sweep's layout case hands the providers channels_last logits (a channels_last
    network's), on both devices' sweeps."""
    import dataclasses

    from bench.cases import sweep
    for device in ("cpu", "cuda"):
        (case,) = [c for c in sweep(device) if c.group == "layout"]
        assert case.layout == "channels_last"
    x, t = dataclasses.replace(case, N=2, spatial=(8, 8)).make("cpu")
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert x.shape == (2, case.C, 8, 8) and t.shape == (2, 8, 8) and x.requires_grad


def test_demo_trains_and_reports(tmp_path):
    from demo.train import main
    results = main(["--size", "48", "--steps", "4", "--eval-every", "2", "--batch", "2",
                    "--train-images", "4", "--val-images", "2", "--width", "8", "--show", "2",
                    "--out", str(tmp_path), "--no-1d"])
    assert set(results) == {"cross_entropy", "jaccard", "cross_entropy+jaccard"}
    summary = json.load(open(tmp_path / "results.json"))
    for name in results:
        assert 0.0 <= summary[name]["miou"] <= 1.0
        assert len(summary[name]["history"]["loss"]) == 4
        assert all(v == v for v in summary[name]["history"]["loss"])  # no NaN
    assert (tmp_path / "curves.png").exists() and (tmp_path / "predictions.png").exists()


def test_demo_1d_variant(tmp_path):
    from demo.signal1d import main
    results = main(["--length", "256", "--steps", "3", "--batch", "4", "--out", str(tmp_path)])
    assert set(results) == {"bce", "jaccard", "bce+jaccard"}
    assert all(0.0 <= v <= 1.0 for v in results.values())


@pytest.mark.skipif(shutil.which("torchrun") is None and
                    not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed")
def test_demo_under_torchrun_two_ranks(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        torchrun = shutil.which("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "demo",
                          "--size", "40", "--steps", "2", "--eval-every", "2", "--batch", "2",
                          "--train-images", "4", "--val-images", "2", "--width", "8",
                          "--show", "1", "--losses", "jaccard", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(tmp_path / "results.json"))
    assert summary["config"]["world"] == 2
    assert 0.0 <= summary["jaccard"]["miou"] <= 1.0
