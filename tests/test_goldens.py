"""The fused backends' loss and gradient, bit for bit, against the goldens in tests/goldens/
(recorded by ``python tests/goldens.py record``; see tests/goldens.py for the grid). A build
whose goldens were not recorded here (another instruction set, another numpy SIMD path for the
interpreted Triton kernels) is skipped with the reason."""

import json
import os

import pytest

import goldens

BUILDS = goldens.builds()


@pytest.mark.parametrize("name,backend,isa", BUILDS, ids=[b[0] for b in BUILDS])
def test_bitwise_goldens(name, backend, isa):
    path = os.path.join(goldens.GOLDENS, f"{name}.json")
    if not os.path.exists(path):
        pytest.skip(f"no goldens recorded for {name}")
    with open(path) as f:
        want = json.load(f)
    got = goldens.compute(backend, isa)
    assert sorted(got) == sorted(want), "the grid changed: record the goldens again"
    moved = [case for case in want if got[case] != want[case]]
    assert not moved, f"{len(moved)} of {len(want)} calls moved: {moved[:10]}"
