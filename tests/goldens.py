"""Bitwise goldens of the fused backends: the loss and gradient bytes of a grid of calls, one
digest per call, recorded per backend build (each CPU instruction-set build; the Triton kernels
under the interpreter, keyed by the SIMD paths numpy's functions take there). A refactoring that
must not move a bit records them first (``python tests/goldens.py record``) and keeps
``tests/test_goldens.py`` green at every step.

The grid crosses every mode and target kind with the four input dtypes, the option sets that
steer the kernels and the finalize step, a channels_last layout, and shapes with full tiles, a
tail and several work items per sample.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

if __name__ == "__main__":  # Triton reads it when it is imported (tests/conftest.py sets it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from helpers import MODE_KINDS, ignore_value, make_inputs, takes_ignore  # noqa: E402

GOLDENS = os.path.join(HERE, "goldens")

DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16,
          "bf16": torch.bfloat16}

# option sets: the statistics' (probabilities, intersection, squares, cross-entropy) and the
# finalize step's (scores, reductions, class selection)
OPTION_SETS = {
    "default": dict(),
    "min-sharp": dict(intersection="min", sharpness=1.7),
    "probs": dict(from_logits=False),
    "probs-sharp": dict(from_logits=False, sharpness=0.6, intersection="min"),
    "dice-pooled-none": dict(metric="dice", per_image=False, reduction="none"),
    "tversky-focal": dict(metric="tversky", alpha=0.3, beta=0.8, gamma=1.7, log_loss=True,
                          smooth=0.5),
    "subset": dict(classes=[0, 2], absent="exclude", reduction="sum",
                   include_background=False),
    "peers": dict(squared=True, smooth=0.25, smooth_dr=1.0, absent="zero",
                  weighted_mean=False),
    "gdice": dict(metric="generalized_dice", w_type="simple", smooth=1e-5),
    "ce": dict(ce_weight=0.7),
    "ce-smooth": dict(ce_weight=0.4, label_smoothing=0.1, sharpness=1.3),
    "ce-pos": dict(ce_weight=0.5, ce_pos_weight=2.5, squared=True),
}

SHAPES = {"2d": (2, 5, 9, 11), "1d": (3, 3, 150), "3d": (2, 4, 3, 5, 6),
          "items": (2, 19, 60, 70)}


def _applies(mode, kind, opts):
    if "ce_pos_weight" in opts and mode == "multiclass":
        return False
    if "label_smoothing" in opts and mode != "multiclass":
        return False
    if opts.get("from_logits") is False and "ce_weight" in opts:
        return False
    if "classes" in opts and mode == "binary":
        return False
    if opts.get("include_background") is False and mode == "binary":
        return False
    return True


def grid(backend):
    """(case id, mode, kind, dtype, options, shape, weighted, ignore, channels_last) of every
    call; the interpreted Triton kernels get a sample of it (they are slow)."""
    out = []
    i = 0
    names = list(OPTION_SETS)
    for mode, kind in MODE_KINDS:
        for dname in DTYPES:
            for k in range(3 if backend == "cpu" else 1):
                oname = names[(i * 5 + k) % len(names)]
                i += 1
                opts = OPTION_SETS[oname]
                if not _applies(mode, kind, opts):
                    oname, opts = "default", {}
                shape_name = ("2d", "1d", "3d")[(i + k) % 3]
                weighted = (i + k) % 2 == 0
                ignore = ignore_value(kind) if takes_ignore(mode, kind) and i % 3 != 1 else None
                if ignore is not None and "generalized" in str(opts.get("metric")):
                    ignore = None
                cl = backend == "cpu" and shape_name == "2d" and k == 1
                out.append((f"{mode}-{kind}-{dname}-{oname}-{shape_name}-w{int(weighted)}"
                            f"-i{ignore}-cl{int(cl)}", mode, kind, DTYPES[dname], opts,
                            SHAPES[shape_name], weighted, ignore, cl))
    for oname, opts in OPTION_SETS.items():  # every option set on the bar case's kind
        if not _applies("multiclass", "map-int64", opts):
            continue
        for dname in (("f32", "bf16") if backend == "cpu" else ("f32",)):
            shape_name = "items" if backend == "cpu" else "2d"
            out.append((f"multiclass-map-int64-{dname}-{oname}-{shape_name}-w1-i-1-cl0",
                        "multiclass", "map-int64", DTYPES[dname], opts, SHAPES[shape_name],
                        True, None if "generalized" in str(opts.get("metric")) else -1, False))
    if backend == "triton":
        out = out[::3]
    return out


def digest(backend, case):
    import softiou_cuda
    _, mode, kind, dtype, opts, shape, weighted, ignore, cl = case
    x, t, w = make_inputs(mode, kind, dtype, "cpu", shape=shape, weight=weighted,
                          ignore_index=ignore, from_logits=opts.get("from_logits", True))
    x = x.detach()
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    cw = None
    if mode != "binary" and opts.get("metric") != "generalized_dice":
        cw = torch.linspace(0.5, 1.5, x.shape[1], dtype=torch.float64).to(
            torch.float64 if dtype == torch.float64 else torch.float32)
    loss = softiou_cuda.soft_iou_loss(x, t, w, class_weight=cw, ignore_index=ignore,
                                      mode=mode, backend=backend, **opts)
    (g,) = torch.autograd.grad(loss.sum(), x)
    h = hashlib.sha256()
    for tensor in (loss.detach(), g):
        h.update(str((tuple(tensor.shape), tensor.dtype, tensor.stride())).encode())
        h.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def numpy_simd() -> str:
    """The SIMD paths numpy's functions (exp, log, ...) take on this processor: the interpreted
    Triton kernels' bits depend on them. An AVX-512 machine records the AVX2 machines' goldens
    too, with numpy's AVX-512 paths turned off: NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL"
    (numpy 2.4's names) clears AVX512_SKX here and numpy then takes its AVX2 paths."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as f
    import numpy
    best = next((k for k in ("AVX512_SKX", "AVX2", "SSE41") if f.get(k)), "none")
    return f"numpy{numpy.__version__}-{best}"


def builds():
    """(golden file name, backend, setup) of every build that runs here."""
    import softiou_cuda
    out = []
    if softiou_cuda.operators.HAS_EXTENSION:
        for isa in softiou_cuda.operators.cpu_isas():
            out.append((f"cpu-{isa}", "cpu", isa))
    if "triton" in softiou_cuda.available_backends("cpu"):
        out.append((f"triton-interpreted-{numpy_simd()}", "triton", None))
    return out


def compute(backend, isa):
    import softiou_cuda
    before = softiou_cuda.operators.cpu_isa() if isa else None
    if isa:
        softiou_cuda._C._set_cpu_isa(isa)
    try:
        return {case[0]: digest(backend, case) for case in grid(backend)}
    finally:
        if isa:
            softiou_cuda._C._set_cpu_isa(before)


def record():
    os.makedirs(GOLDENS, exist_ok=True)
    for name, backend, isa in builds():
        digests = compute(backend, isa)
        with open(os.path.join(GOLDENS, f"{name}.json"), "w") as f:
            json.dump(digests, f, indent=0, sort_keys=True)
            f.write("\n")
        print(f"{name}: {len(digests)} calls recorded")


if __name__ == "__main__":
    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python tests/goldens.py record")
    record()
