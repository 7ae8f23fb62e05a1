"""The static performance reports of the GPU kernels: the CUDA kernels' (tools/perf_report.py),
its parsing of ptxas and SASS listings, and the Triton kernels' compiled offline for sm_90
(tools/triton_report.py); every kernel family of both held to its budget in
tools/perf_budget.json (the reports are made by `make cuda-compile-check`, which `make test` runs
first)."""

import glob
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = os.path.join(ROOT, "build", "cuda-compile-check")
BUDGET = os.path.join(ROOT, "tools", "perf_budget.json")

_spec = importlib.util.spec_from_file_location("perf_report",
                                               os.path.join(ROOT, "tools", "perf_report.py"))
perf_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(perf_report)
_spec = importlib.util.spec_from_file_location("triton_report",
                                               os.path.join(ROOT, "tools", "triton_report.py"))
triton_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(triton_report)

PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 36 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 16 bytes cumulative stack size
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_Z3barPf' for 'sm_90'
ptxas info    : Function properties for _Z3barPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""

SASS = """\
\tcode for sm_90
\t\tFunction : _Z3fooPf
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E.U16 R8, desc[UR4][R6.64] ;
        /*0030*/                   LDG.E R9, desc[UR4][R6.64] ;
        /*0040*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0050*/                   ST.E desc[UR4][R2.64], R4 ;
\t\tFunction : _Z3barPf
        /*0000*/                   STG.E.128 desc[UR4][R2.64], R4 ;
"""


def test_parses_ptxas_entry_functions_only():
    got = perf_report.parse_ptxas(PTXAS)
    assert got == {
        ("sm_90", "_Z3fooPf"): {"registers": 168, "stack": 16, "spill_stores": 36,
                                "spill_loads": 40},
        ("sm_90", "_Z3barPf"): {"registers": 40, "stack": 0, "spill_stores": 0,
                                "spill_loads": 0},
    }


def test_parses_global_memory_widths_from_sass():
    got = perf_report.parse_sass(SASS)
    assert dict(got[("sm_90", "_Z3fooPf")]["loads"]) == {"16": 1, "2": 1, "4": 1}
    assert dict(got[("sm_90", "_Z3fooPf")]["stores"]) == {"8": 1, "generic 4": 1}
    assert dict(got[("sm_90", "_Z3barPf")]["stores"]) == {"16": 1}
    assert dict(got[("sm_90", "_Z3barPf")]["loads"]) == {}


LOOP_SASS = """\
        /*0000*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0030*/              @!P0 BRA 0x10 ;
        /*0040*/               @P1 BRA 0x60 ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0060*/                   BAR.RED.POPC RZ, 0x0, PT ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
"""


def test_barriers_inside_loops_are_those_a_backward_branch_repeats():
    # the loop is 0x10..0x30 (the branch back to 0x10), 3 instructions; the forward branch and
    # the final self-branch make none
    assert triton_report.loops(LOOP_SASS) == (4, 1, 3)


def test_sass_loop_size_per_function():
    got = perf_report.parse_sass("\tcode for sm_90\n\t\tFunction : _Z3bazv\n" + LOOP_SASS
                                 + "\t\tFunction : _Z3quxv\n" + SASS.split("_Z3barPf\n")[1])
    assert got[("sm_90", "_Z3bazv")]["loop_instructions"] == 3
    assert got[("sm_90", "_Z3quxv")]["loop_instructions"] == 0


def test_family_is_the_template_and_its_input_type():
    f = perf_report.family
    assert f("void softiou::cuda::detail::pixel_kernel<__nv_bfloat16, long, 8, true, false, "
             "false, false>(softiou::cuda::detail::Launch)") == "pixel_kernel/bf16"
    assert f("void softiou::cuda::detail::pixel_kernel<float, long, 4, true, false, false, "
             "true>(softiou::cuda::detail::Launch)") == "pixel_kernel/f32+basic"
    assert f("void softiou::cuda::detail::row_kernel<float, float, 4, true, true>"
             "(softiou::cuda::detail::Launch)") == "row_kernel/f32"
    assert f("void softiou::cuda::detail::count_kernel<float, bool>(softiou::KernelArgs, "
             "unsigned long long*)") == "count_kernel/f32"
    assert f("void softiou::cuda::detail::reduce_kernel<double>(double const*)") == \
        "reduce_kernel/f64"
    assert f("void softiou::cuda::detail::finish_counts_kernel(long long*, long)") == \
        "finish_counts_kernel"


def test_family_worst_figures():
    records = [
        {"arch": "sm_90", "family": "k", "registers": 100, "spill_stores": 0, "spill_loads": 0,
         "loads": {"16": 3}, "stores": {"4": 1}},
        {"arch": "sm_90", "family": "k", "registers": 130, "spill_stores": 8, "spill_loads": 12,
         "loads": {"4": 1}, "stores": {"generic 8": 1}},
        {"arch": "sm_80", "family": "k", "registers": 255, "spill_stores": 99, "spill_loads": 0,
         "loads": {}, "stores": {}},
    ]
    fam = perf_report.by_family(records, "sm_90")["k"]
    assert fam == {"instantiations": 2, "registers": 130, "spill_bytes": 20, "spilling": 1,
                   "load_bytes": [4, 16], "store_bytes": [4, 8]}


def test_write_budget_ratchets_down_and_records_the_families_within_the_targets(tmp_path):
    path = str(tmp_path / "budget.json")
    with open(path, "w") as f:
        json.dump({"arch": "sm_90", "targets": perf_report.TARGETS, "other": 1,
                   "families": {"a/f32": {"registers": 200, "spill_bytes": 64},
                                "b/f32": {"registers": 60, "spill_bytes": 8}}}, f)
    fam = {"store_bytes": [4]}
    perf_report.write_budget({"a/f32": dict(fam, registers=220, spill_bytes=32),
                              "b/f32": dict(fam, registers=96, spill_bytes=0),
                              "c/f32": dict(fam, registers=40, spill_bytes=0)}, "sm_90", path=path)
    with open(path) as f:
        got = json.load(f)
    assert got["other"] == 1
    assert got["families"] == {
        # over the targets: the lower of the old budget and the figures, per figure
        "a/f32": {"registers": 200, "spill_bytes": 32, "meets_targets": False},
        # within them: held to the targets, its figures as they are now
        "b/f32": {"registers": 96, "spill_bytes": 0, "meets_targets": True},
        "c/f32": {"registers": 40, "spill_bytes": 0, "meets_targets": True},
    }


# report: (its file, the budget's key, the sources it is compiled from, the figures besides
# registers and spill bytes that may not grow)
KINDS = {
    "cuda": ("perf-report.json", "families", ["csrc/**/*.cu*", "csrc/*.h"], ()),
    "triton": ("triton-report.json", "triton_families",
               ["triton_kernels/*.py", "tools/triton_report.py"], ("loop_barriers",)),
}


def _report(kind):
    name, _, sources, _ = KINDS[kind]
    path = os.path.join(REPORTS, name)
    if not os.path.exists(path):
        pytest.skip(f"no {kind} report: `make cuda-compile-check` (needs nvcc) writes it")
    files = [p for pattern in sources for p in glob.glob(os.path.join(ROOT, pattern),
                                                        recursive=True)]
    if max(os.path.getmtime(p) for p in files) > os.path.getmtime(path):
        pytest.skip(f"the {kind} report is older than its sources: "
                    "`make cuda-compile-check` rebuilds it")
    with open(path) as f:
        return json.load(f)


def over_budget(families: dict, budget: dict, key: str, extra=()) -> list:
    """What is over its budget: per family, registers, spill bytes and the `extra` figures
    within budget[key][family]; a family that meets the targets is held to them, a gradient
    kernel's stores of 16 bytes included. A family without a budget is over it."""
    targets = budget["targets"]
    over = []
    for name, fam in sorted(families.items()):
        limit = budget[key].get(name)
        if limit is None:
            over.append(f"{name}: no budget in tools/perf_budget.json ({key})")
            continue
        if limit.get("meets_targets"):
            limit = dict(limit, registers=targets["registers"], spill_bytes=targets["spill_bytes"])
            if not perf_report.stores_within_target(name, fam["store_bytes"]):
                over.append(f"{name}: widest global store {max(fam['store_bytes'])} bytes, "
                            f"target {targets['store_bytes']}")
        for figure in ("registers", "spill_bytes") + tuple(extra):
            if fam[figure] > limit[figure]:
                over.append(f"{name}: {fam[figure]} {figure.replace('_', ' ')}, budget "
                            f"{limit[figure]}")
    return over


def test_over_budget_names_each_figure():
    budget = {"targets": {"registers": 128, "spill_bytes": 0, "store_bytes": 16},
              "k": {"a": {"registers": 200, "spill_bytes": 8, "loop_barriers": 4,
                          "meets_targets": False},
                    "row_kernel/f32": {"registers": 100, "spill_bytes": 0, "loop_barriers": 0,
                          "meets_targets": True}}}
    fam = {"registers": 200, "spill_bytes": 8, "loop_barriers": 4, "store_bytes": [16]}
    assert over_budget({"a": fam}, budget, "k", ("loop_barriers",)) == []
    assert over_budget({"a": dict(fam, loop_barriers=5)}, budget, "k", ("loop_barriers",)) == \
        ["a: 5 loop barriers, budget 4"]
    assert over_budget({"a": dict(fam, loop_barriers=5)}, budget, "k") == []
    # a family that meets the targets is held to them, not to its own figures
    b = "row_kernel/f32"
    assert over_budget({b: dict(fam, registers=120, spill_bytes=0, store_bytes=[4])}, budget,
                       "k") == [f"{b}: widest global store 4 bytes, target 16"]
    assert over_budget({b: dict(fam, registers=129, spill_bytes=0)}, budget, "k") == \
        [f"{b}: 129 registers, budget 128"]
    # the 16-byte store target is the gradient kernels': a second stage writes a few sums
    budget["k"]["reduce_kernel/f32"] = budget["k"][b]
    assert over_budget({"reduce_kernel/f32": dict(fam, registers=34, spill_bytes=0,
                                                  store_bytes=[4])}, budget, "k") == []
    assert over_budget({"c": fam}, budget, "k") == ["c: no budget in tools/perf_budget.json (k)"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kernel_family_within_its_budget(kind):
    """Registers and spill bytes of each family's worst instantiation (sm_90; for the Triton
    kernels, their barriers inside loops too) within the budget tools/perf_budget.json gives
    it. A new family declares its budget there."""
    report = _report(kind)
    with open(BUDGET) as f:
        budget = json.load(f)
    assert report["arch"] == budget["arch"]
    _, key, _, extra = KINDS[kind]
    over = over_budget(report["families"], budget, key, extra)
    assert not over, "\n".join(over)


def test_every_cuda_kernel_meets_the_targets():
    """The redesign's budgets hold for every CUDA kernel family, every dtype's build: no spills,
    at most 128 registers, 16-byte stores in the gradient kernels (the ratchet above holds each
    family that meets them to them; here no family may leave them, even by a budget raised by
    hand)."""
    with open(BUDGET) as f:
        budget = json.load(f)
    missing = sorted(name for name, limit in budget["families"].items()
                     if not limit["meets_targets"])
    assert not missing, f"families below the targets: {missing}"
