"""``python -m bench``: softiou against eager PyTorch, torch.compile and the peers.

For every case and provider: the provider's loss is checked against the float64 reference, then
forward, backward and forward+backward are timed (median and spread, warm-up excluded, inputs
rotated, the L2 flushed before every call on the GPU, the inputs read before every call on the
CPU), the peak memory above the inputs is measured, and the
achieved bandwidth (the fewest bytes the direction must move, over the time) is set against a
device-to-device copy measured in the same run. Output: a table on stdout, a JSON file and PNG
plots under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys

import torch

import softiou_cuda

from . import cases as cases_mod
from . import providers as prov
from .memory import PeakRSS
from .timing import Timer, copy_bandwidth

DIRECTIONS = ("forward", "backward", "forward+backward")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git_commit():
    if os.environ.get("SOFTIOU_COMMIT"):
        return os.environ["SOFTIOU_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device):
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "softiou_cpu_isa": softiou_cuda.operators.cpu_isa(),
            "commit": _git_commit(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else None
    except OSError:
        info["cpu"] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_multiprocessors=p.multi_processor_count,
                    gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
    return info


def _input_sets(case, device, count):
    return [case.make(device, seed=i) for i in range(count)]


def _sets_for(case, device):
    # rotate enough input sets that they do not fit in the last-level cache together
    size = case.input_bytes() + case.target_bytes()
    return max(2, min(4, (200 * 2 ** 20) // max(size, 1) + 1))


def check(provider, case, fn, x, t):
    """The provider's loss against the float64 reference; None where it computes another loss."""
    want = prov.expected_loss(provider.metric, case, x, t)
    if want is None:
        return {"ok": True, "rel_err": None}
    got = fn(x, t).detach().double()
    rel = ((got - want).abs() / want.abs().clamp_min(1e-12)).item()
    tol = 1e-3 if case.dtype == "float32" else 3e-2
    return {"ok": bool(rel <= tol), "rel_err": rel}


def _direction_calls(fn, sets):
    """(setup, timed call) of each direction; setup(i) prepares call i on input set i % K."""
    k = len(sets)

    def fresh(i):
        x, t = sets[i % k]
        x.grad = None
        if x.device.type == "cpu":
            # read the inputs (untimed), so that every provider starts with them as warm as the
            # caches allow: in the per-call group's rounds, where each provider takes the same
            # input set in turn, the first one otherwise found it cold and the others warm
            x.detach().sum()
            t.sum()
        return x, t

    def setup_backward(i):
        x, t = fresh(i)
        return (fn(x, t),)

    return {"forward": (fresh, lambda x, t: fn(x, t)),
            "backward": (setup_backward, lambda loss: loss.backward()),
            "forward+backward": (fresh, lambda x, t: fn(x, t).backward())}


def time_provider(timer, fn, sets):
    return {d: timer.measure(*call) for d, call in _direction_calls(fn, sets).items()}


def time_interleaved(timer, entries):
    """The providers of one case timed in rounds, one call of each per round, so that the
    machine's noise falls on all of them alike (the per-call group, where a call is short)."""
    calls = [_direction_calls(fn, sets) for _, fn, sets in entries]
    out = [{} for _ in entries]
    for d in DIRECTIONS:
        for timing, summary in zip(out, timer.measure_interleaved([c[d] for c in calls])):
            timing[d] = summary
    return out


def call_counts(fn, x, t, device):
    """Dispatcher ops and (GPU) kernel launches of one forward+backward, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    x.grad = None
    with profile(activities=activities) as prof:
        fn(x, t).backward()
        if device == "cuda":
            torch.cuda.synchronize()
    x.grad = None
    events = prof.events()
    ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and "::" in e.name
           and not e.name.startswith(("autograd::", "torch::autograd"))]
    launches = None
    if device == "cuda":
        launches = len([e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                        and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()])
    return {"dispatcher_ops": len(ops), "kernel_launches": launches}


def gpu_peak_extra(fn, x, t):
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(x, t).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    x.grad = None
    return extra


def cpu_peak_extra(case, provider_name):
    """One process per case: the peak resident memory of one forward+backward above its inputs."""
    cmd = [sys.executable, "-m", "bench", "--memory-worker",
           json.dumps(dataclasses.asdict(case)), provider_name]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


def memory_worker(case_json, provider_name):
    case = cases_mod.Case(**{k: tuple(v) if k == "spatial" else v
                             for k, v in json.loads(case_json).items()})
    provider = next(p for p in prov.providers("cpu") if p.name == provider_name)
    fn = provider.make(case)
    small = dataclasses.replace(case, N=1, spatial=tuple(min(s, 16) for s in case.spatial))
    xs, ts = small.make("cpu")
    fn(xs, ts).backward()  # lazy initialisation (and compilation) outside the measurement
    x, t = case.make("cpu")
    fn(x, t).backward()  # the first call at this shape (compile, thread pools)
    x.grad = None
    with PeakRSS() as m:
        fn(x, t).backward()
    print(json.dumps({"extra": m.extra}))


def _prepare_provider(args, case, provider, sets, notes):
    """The record of (case, provider) with its loss function under "_fn", checked against the
    reference on the case's inputs, or the reason it is skipped."""
    rec = {"case": case.name, "group": case.group, "N": case.N, "C": case.C,
           "spatial": list(case.spatial), "dtype": case.dtype, "mode": case.mode,
           "layout": case.layout, "threads": case.threads or torch.get_num_threads(),
           "provider": provider.name}
    if provider.name == "reference-compiled" and case.group not in ("bar", "per-call") \
            and not args.compile_all:
        rec["skipped"] = "torch.compile of the reference is timed on the bar and per-call " \
                         "cases only (each new shape compiles anew)"
        return rec
    try:
        fn = provider.make(case)
    except prov.Unavailable as exc:
        notes[provider.name] = str(exc)
        rec["skipped"] = str(exc)
        return rec
    except ImportError as exc:  # a peer installed without its dependencies (the tests' --no-deps)
        notes[provider.name] = rec["skipped"] = f"cannot be imported: {exc}"
        return rec
    try:
        rec["check"] = check(provider, case, fn, *sets[0])
    except Exception as exc:  # noqa: BLE001 - a provider that fails is reported, not timed
        rec["skipped"] = f"failed: {type(exc).__name__}: {exc}"[:300]
        return rec
    if not rec["check"]["ok"]:
        rec["skipped"] = "loss differs from the reference; not timed"
        return rec
    rec["_fn"] = fn
    return rec


def run(args):
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here")
    torch.manual_seed(0)
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        def tqdm(it, **_):
            return it
    info = machine_info(device)
    copy_bw = copy_bandwidth(device)
    print(f"device: {info.get('gpu') or info.get('cpu')}, torch {info['torch']}, "
          f"copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    all_cases = cases_mod.sweep(device, args.sweep)
    if args.cases:
        all_cases = [c for c in all_cases if any(s in c.name for s in args.cases.split(","))]
    plist = prov.providers(device)
    if args.providers:
        wanted = args.providers.split(",")
        plist = [p for p in plist if p.name in wanted]
    timer = Timer(device, warmup=args.warmup, reps=args.reps, budget_s=args.budget)
    # short calls: more repetitions, interleaved
    call_timer = Timer(device, warmup=max(args.warmup, 10), reps=max(args.reps, 300),
                       budget_s=args.budget)
    results, notes = [], {}
    for case in tqdm(all_cases, desc="bench", unit="case", dynamic_ncols=True):
        threads = torch.get_num_threads()
        if case.threads:
            torch.set_num_threads(case.threads)
        try:
            # every provider gets the same inputs: made once per case
            sets = _input_sets(case, device, _sets_for(case, device))
            entries = []
            for provider in plist:
                rec = _prepare_provider(args, case, provider, sets, notes)
                results.append(rec)
                if "skipped" not in rec:
                    entries.append((rec, rec.pop("_fn"), sets))
            if case.group == "per-call":
                timings = time_interleaved(call_timer, entries)
            elif case.group in ("ce", "counts"):
                # the cross-entropy term or the counts against softiou alone: a ratio, so the
                # same inputs in turn
                timings = time_interleaved(timer, entries)
            else:
                timings = [time_provider(timer, fn, sets) for _, fn, sets in entries]
            for (rec, fn, sets), timing in zip(entries, timings):
                rec["timing"] = timing
                for d in DIRECTIONS:
                    ms = timing[d]["median_ms"]
                    gbps = case.min_bytes(d) / (ms / 1e3) / 1e9
                    timing[d]["min_bytes"] = case.min_bytes(d)
                    timing[d]["achieved_GBps"] = gbps
                    timing[d]["fraction_of_copy_bandwidth"] = gbps / copy_bw
                rec.update(call_counts(fn, *sets[0], device))
                if not args.no_memory and case.group != "per-call":
                    extra = gpu_peak_extra(fn, *sets[0]) if device == "cuda" else \
                        cpu_peak_extra(case, rec["provider"])
                    rec["peak_extra_bytes"] = extra
                    rec["peak_extra_over_input"] = None if extra is None else \
                        extra / case.input_bytes()
            del entries, sets
        finally:
            torch.set_num_threads(threads)
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"machine": info, "device": device, "copy_bandwidth_GBps": copy_bw,
            "providers": {p.name: p.note for p in plist}, "unavailable": notes,
            "compile_notes": dict(prov.compile_notes), "results": results}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=["cpu", "cuda"])
    ap.add_argument("--sweep", default="full", choices=["full", "quick"])
    ap.add_argument("--cases", help="comma-separated substrings of case names to run")
    ap.add_argument("--providers", help="comma-separated provider names")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=15.0,
                    help="seconds of timed calls per measurement before fewer repetitions")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--compile-all", action="store_true",
                    help="time torch.compile of the reference on every case (by default on the "
                         "bar and per-call cases only: every new shape compiles anew)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--tag", help="name of the result files (default: the device)")
    ap.add_argument("--tune-triton", action="store_true",
                    help="sweep the Triton launch configurations instead (GPU)")
    ap.add_argument("--triton-pixel-layout", choices=["split", "in_thread"],
                    help="the Triton multiclass kernel's tile layout in the timed calls "
                         "(triton_kernels/configs.py: PIXEL_LAYOUT; default: the table's)")
    ap.add_argument("--memory-worker", nargs=2, metavar=("CASE", "PROVIDER"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        return memory_worker(*args.memory_worker)
    if args.triton_pixel_layout:
        from softiou_cuda.triton_kernels import configs
        configs.PIXEL_LAYOUT.update(forward=args.triton_pixel_layout,
                                    backward=args.triton_pixel_layout)
    if args.tune_triton:
        from .tune import tune
        return tune(args)
    from .report import write
    report = run(args)
    write(report, args.out, args.tag or report["device"])
