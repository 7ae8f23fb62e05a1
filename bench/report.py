"""The benchmark's output: a table on stdout, bench/results/<tag>.json and PNG plots, plus the
figures that the performance targets (bench/README.md) are stated in."""

from __future__ import annotations

import json
import os
import statistics


def _fmt_ms(rec, d):
    t = rec.get("timing", {}).get(d)
    return f"{t['median_ms']:9.2f}" if t else "        -"


def _get(results, case, provider):
    for r in results:
        if r["case"] == case and r["provider"] == provider and "timing" in r:
            return r
    return None


def _ms(r, d="forward+backward"):
    return r["timing"][d]["median_ms"] if r else None


def paired_ratio(r, other, d="forward+backward"):
    """The median over the rounds of r's time over other's in the same round, for two providers
    timed in turn (bench.run: the ce and counts groups), or None: a drift of the machine's speed
    between rounds falls on both sides of each ratio alike."""
    a = r["timing"][d].get("rounds_ms") if r else None
    b = other["timing"][d].get("rounds_ms") if other else None
    if not a or not b or len(a) != len(b):
        return None
    return statistics.median(x / y for x, y in zip(a, b))


def _per_call(res, device):
    """The per-call group: each case's softiou time against F.cross_entropy and the peers, with
    the dispatcher ops and (GPU) kernel launches of one forward+backward."""
    out = {}
    mine = [f"softiou-{b}" for b in (("cpu",) if device == "cpu" else ("cuda", "triton"))]
    for case in sorted({r["case"] for r in res if r["group"] == "per-call"}):
        ce = _get(res, case, "cross_entropy")
        for name in mine:
            me = _get(res, case, name)
            if not me:
                continue
            f = _ms(me)
            out[f"{case}-{name}"] = {
                "threads": me.get("threads"),
                "softiou_ms": f,
                "cross_entropy_ms": _ms(ce) if ce else None,
                "time_over_cross_entropy": (f / _ms(ce)) if ce else None,
                "time_over_peers": {r["provider"]: f / _ms(r) for r in res
                                    if r["case"] == case and "timing" in r
                                    and not r["provider"].startswith("softiou")},
                "dispatcher_ops": me.get("dispatcher_ops"),
                "kernel_launches": me.get("kernel_launches"),
            }
    return out


def _cross_entropy_group(res, device):
    """The cross-entropy + IoU cases: the fused term against softiou's IoU loss alone and against
    F.cross_entropy and softiou called apart (on the same inputs, timed in turn)."""
    out = {}
    for case in sorted({r["case"] for r in res if r["group"] == "ce"}):
        for backend in (("cpu",) if device == "cpu" else ("cuda", "triton")):
            me = _get(res, case, f"softiou-{backend}")
            if not me:
                continue
            f = _ms(me)
            alone = _get(res, case, f"softiou-{backend}-without-ce")
            apart = _get(res, case, f"cross_entropy+softiou-{backend}")
            out[f"{case}-{backend}"] = {
                "fused_ms": f,
                "softiou_alone_ms": _ms(alone) if alone else None,
                "time_over_softiou_alone": (f / _ms(alone)) if alone else None,
                "time_over_softiou_alone_paired": paired_ratio(me, alone),
                "apart_ms": _ms(apart) if apart else None,
                "time_over_apart": (f / _ms(apart)) if apart else None,
                "time_over_peers": {r["provider"]: f / _ms(r) for r in res
                                    if r["case"] == case and "timing" in r
                                    and not r["provider"].startswith(("softiou", "cross_entropy+"))},
                "peak_extra_over_logits": me.get("peak_extra_over_input"),
                "apart_peak_extra_over_logits": apart.get("peak_extra_over_input") if apart else None,
            }
    return out


def _counts_group(res, device):
    """The loss with its hard counts (SPEC section 11) against the loss alone and against the
    loss plus torchmetrics' separate pass, forward+backward, each side from the same run."""
    out = {}
    for case, backend in [(c, b) for c in sorted({r["case"] for r in res
                                                  if r["case"].endswith("-counts")})
                          for b in (("cpu",) if device == "cpu" else ("cuda", "triton"))]:
        me = _get(res, case, f"softiou-{backend}")
        if not me:
            continue
        f = _ms(me)
        alone = _get(res, case, f"softiou-{backend}-without-counts")
        apart = _get(res, case, f"softiou-{backend}+torchmetrics")
        out[f"{case}-{backend}"] = {
            "loss_and_counts_ms": f,
            "loss_alone_ms": _ms(alone) if alone else None,
            "time_over_loss_alone": (f / _ms(alone)) if alone else None,
            "time_over_loss_alone_paired": paired_ratio(me, alone),
            "loss_and_torchmetrics_ms": _ms(apart) if apart else None,
            "time_over_loss_and_torchmetrics": (f / _ms(apart)) if apart else None,
            "peak_extra_over_logits": me.get("peak_extra_over_input"),
            "alone_peak_extra_over_logits": alone.get("peak_extra_over_input") if alone else None,
        }
    return out


def bars(report):
    """The figures of the performance targets, from the bar, per-call and cross-entropy cases
    (None where a side is missing)."""
    res = report["results"]
    out = {"per-call": _per_call(res, report["device"]),
           "cross-entropy": _cross_entropy_group(res, report["device"]),
           "counts": _counts_group(res, report["device"])}
    if report["device"] == "cpu":
        me = _get(res, "cpu-bar", "softiou-cpu")
        if me:
            f = _ms(me)
            out["cpu-bar"] = {
                "case": "N=4, C=19, 512x1024, float32 logits, int64 class map, forward+backward",
                "softiou_ms": f,
                "speedup_vs_reference_eager": _ratio(_get(res, "cpu-bar", "reference-eager"), f),
                "speedup_vs_reference_compiled": _ratio(_get(res, "cpu-bar", "reference-compiled"), f),
                "speedup_vs_cross_entropy": _ratio(_get(res, "cpu-bar", "cross_entropy"), f),
                "peak_extra_over_logits": me.get("peak_extra_over_input"),
                "peak_extra_over_logits_peers": {
                    r["provider"]: r.get("peak_extra_over_input") for r in res
                    if r["case"] == "cpu-bar" and "timing" in r and r["provider"] != "softiou-cpu"},
            }
    else:
        for backend in ("cuda", "triton"):
            me = _get(res, "gpu-bar", f"softiou-{backend}")
            if not me:
                continue
            f = _ms(me)
            bf = _get(res, "gpu-bar-bf16", f"softiou-{backend}")
            out[f"gpu-bar-{backend}"] = {
                "case": "N=8, C=19, 1024x2048, float32 logits, int64 class map, forward+backward",
                "softiou_ms": f,
                "fraction_of_copy_bandwidth": me["timing"]["forward+backward"]["fraction_of_copy_bandwidth"],
                "speedup_vs_cross_entropy": _ratio(_get(res, "gpu-bar", "cross_entropy"), f),
                "speedup_vs_reference_eager": _ratio(_get(res, "gpu-bar", "reference-eager"), f),
                "speedup_vs_reference_compiled": _ratio(_get(res, "gpu-bar", "reference-compiled"), f),
                "bf16_time_over_f32": (_ms(bf) / f) if bf else None,
                "peak_extra_over_logits": me.get("peak_extra_over_input"),
            }
        c, t = _get(res, "gpu-bar", "softiou-cuda"), _get(res, "gpu-bar", "softiou-triton")
        if c and t:
            out["triton_time_over_cuda"] = _ms(t) / _ms(c)
    return out


def _count(v):
    return f"{v:4d}" if v is not None else "   -"


def _ratio(other, mine):
    return (_ms(other) / mine) if other else None


def table(report):
    lines = []
    head = (f"{'case':26s} {'provider':20s} {'fwd ms':>9s} {'bwd ms':>9s} {'f+b ms':>9s} "
            f"{'f+b GB/s':>9s} {'of copy':>7s} {'peak/in':>7s} {'ops':>4s} {'kern':>4s}  check")
    lines.append(head)
    lines.append("-" * len(head))
    for r in report["results"]:
        if "timing" not in r:
            lines.append(f"{r['case']:26s} {r['provider']:20s}  skipped: {r.get('skipped', '')[:70]}")
            continue
        fb = r["timing"]["forward+backward"]
        peak = r.get("peak_extra_over_input")
        err = r["check"]["rel_err"]
        lines.append(
            f"{r['case']:26s} {r['provider']:20s} {_fmt_ms(r, 'forward')} {_fmt_ms(r, 'backward')} "
            f"{_fmt_ms(r, 'forward+backward')} {fb['achieved_GBps']:9.1f} "
            f"{fb['fraction_of_copy_bandwidth']:7.2f} "
            f"{'      -' if peak is None else f'{peak:7.2f}'} "
            f"{_count(r.get('dispatcher_ops'))} {_count(r.get('kernel_launches'))}  "
            f"{'-' if err is None else f'{err:.1e}'}")
    return "\n".join(lines)


def plots(report, out_dir, tag):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    res = [r for r in report["results"] if r["group"] in ("resolution", "bar")
           and r["dtype"] == "float32" and r["C"] == 19 and "timing" in r]
    providers = sorted({r["provider"] for r in res})
    files = []
    where = report["machine"].get("gpu") or report["machine"].get("cpu") or report["device"]
    for what, key, label in (("time", None, "forward+backward time (ms)"),
                             ("memory", "peak_extra_bytes", "peak memory above inputs (MiB)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for p in providers:
            pts = sorted({(r["N"] * r["spatial"][0] * r["spatial"][1],
                           r["timing"]["forward+backward"]["median_ms"] if key is None
                           else (r.get(key) or 0) / 2 ** 20) for r in res if r["provider"] == p})
            if pts:
                ax.plot([a / 1e6 for a, _ in pts], [b for _, b in pts], marker="o", label=p)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("megapixels per batch (N x H x W), C = 19, float32")
        ax.set_ylabel(label)
        ax.set_title(f"softiou vs peers: {what} ({where})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():  # a sweep without a C = 19 case has nothing to plot
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{tag}-{what}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def write(report, out_dir, tag):
    os.makedirs(out_dir, exist_ok=True)
    report["bars"] = bars(report)
    path = os.path.join(out_dir, f"{tag}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    text = table(report)
    with open(os.path.join(out_dir, f"{tag}.txt"), "w") as f:
        m = report["machine"]
        f.write(f"# {m.get('gpu') or m.get('cpu')} | softiou cpu kernels "
                f"{m.get('softiou_cpu_isa')} | torch {m['torch']} | triton {m['triton']} | "
                f"commit {m['commit'][:12]} | {m['date']} | copy bandwidth "
                f"{report['copy_bandwidth_GBps']:.0f} GB/s\n")
        f.write(text + "\n")
    files = plots(report, out_dir, tag)
    print(text)
    print("\nbars:", json.dumps(report["bars"], indent=1))
    if report.get("unavailable"):
        print("not installed:", json.dumps(report["unavailable"], indent=1))
    print(f"\nwrote {path}" + "".join(f", {p}" for p in files))
