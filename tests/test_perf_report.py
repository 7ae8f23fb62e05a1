"""The static performance report of the CUDA kernels (tools/perf_report.py): its parsing of
ptxas and SASS listings, and every kernel family held to its budget in tools/perf_budget.json
(the report is made by `make cuda-compile-check`, which `make test` runs first)."""

import glob
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "build", "cuda-compile-check", "perf-report.json")
BUDGET = os.path.join(ROOT, "tools", "perf_budget.json")

_spec = importlib.util.spec_from_file_location("perf_report",
                                               os.path.join(ROOT, "tools", "perf_report.py"))
perf_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(perf_report)

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


def _report():
    if not os.path.exists(REPORT):
        pytest.skip("no static report: `make cuda-compile-check` (needs nvcc) writes it")
    sources = glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu*"), recursive=True) + \
        glob.glob(os.path.join(ROOT, "csrc", "*.h"))
    if max(os.path.getmtime(p) for p in sources) > os.path.getmtime(REPORT):
        pytest.skip("the static report is older than the CUDA sources: "
                    "`make cuda-compile-check` rebuilds it")
    with open(REPORT) as f:
        return json.load(f)


def test_every_kernel_family_within_its_budget():
    """Registers and spill bytes of each family's worst instantiation (sm_90) within the budget
    tools/perf_budget.json gives it; a family that meets the targets is held to them, stores
    of 16 bytes included. A new family declares its budget there."""
    report = _report()
    with open(BUDGET) as f:
        budget = json.load(f)
    assert report["arch"] == budget["arch"]
    targets = budget["targets"]
    over = []
    for name, fam in sorted(report["families"].items()):
        limit = budget["families"].get(name)
        if limit is None:
            over.append(f"{name}: no budget in tools/perf_budget.json")
            continue
        if limit.get("meets_targets"):
            limit = dict(limit, registers=targets["registers"], spill_bytes=targets["spill_bytes"])
            if fam["store_bytes"] and max(fam["store_bytes"]) < targets["store_bytes"]:
                over.append(f"{name}: widest global store {max(fam['store_bytes'])} bytes, "
                            f"target {targets['store_bytes']}")
        if fam["registers"] > limit["registers"]:
            over.append(f"{name}: {fam['registers']} registers, budget {limit['registers']}")
        if fam["spill_bytes"] > limit["spill_bytes"]:
            over.append(f"{name}: {fam['spill_bytes']} spill bytes, budget {limit['spill_bytes']}")
    assert not over, "\n".join(over)
