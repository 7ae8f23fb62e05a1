"""The architecture as the tree shows it: each option declared once and named in few source files,
no option read by a hand-counted position, few operators, the README for users."""

import ast
import io
import os
import re
import tokenize

import pytest
import torch

import softiou_cuda
from softiou_cuda import options as declared

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("softiou_cuda", "csrc", "triton_kernels")
SUFFIXES = (".py", ".h", ".cpp", ".cu", ".cuh")


def _source_files():
    """The library's source files: the package, the C++ and CUDA sources and the Triton backend,
    without softiou_cuda/compat/ (the peers' argument names are theirs) and the generated
    csrc/generated/ (derived from the declaration at build time)."""
    for top in SOURCES:
        for root, _, files in os.walk(os.path.join(REPO, top)):
            rel = os.path.relpath(root, REPO)
            if rel.startswith(("softiou_cuda/compat", "csrc/generated")) or "__pycache__" in rel:
                continue
            for f in files:
                if f.endswith(SUFFIXES):
                    yield os.path.join(rel, f)


def _python_code(text):
    """Python source without its comments and docstrings: the names and strings it uses."""
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.body and isinstance(node.body[0], ast.Expr) \
                    and isinstance(node.body[0].value, ast.Constant) \
                    and isinstance(node.body[0].value.value, str):
                docstrings.add(node.body[0].lineno)
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            continue
        if tok.type == tokenize.STRING and tok.start[0] in docstrings:
            continue
        out.append(tok.string)
    return " ".join(out)


def _cpp_code(text):
    """C++ source without its comments."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.splitlines())


def _code(path):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    return _python_code(text) if path.endswith(".py") else _cpp_code(text)


CODE = {path: _code(path) for path in _source_files()}


def files_naming(name):
    return sorted(p for p, code in CODE.items() if re.search(rf"\b{name}\b", code))


# A kernel family is one place however its files are cut: the CPU kernels, the CUDA kernels, the
# Triton backend, and the torch-free headers the CPU and CUDA kernels share.
FAMILIES = ("csrc/cpu/", "csrc/cuda/", "triton_kernels/")
SHARED_KERNEL_HEADERS = ("csrc/softiou_math.h", "csrc/kernel_args.h", "csrc/finalize.h",
                         "csrc/option_types.h")


# The user API is one place too: the loss's functions and modules, and the epoch metrics, which
# take the same options for their counts.
USER_API = ("softiou_cuda/api.py", "softiou_cuda/metrics.py")


def places(files):
    out = set()
    for f in files:
        family = next((fam for fam in FAMILIES if f.startswith(fam)), None)
        if f in USER_API:
            family = "the user API"
        out.add(family or ("csrc/ (shared kernel headers)" if f in SHARED_KERNEL_HEADERS else f))
    return sorted(out)


# The glue between the user and the kernels, and what of the options it may name: the backend
# (the route is its job), and in csrc/ops/inputs.h the input rules of SPEC sections 1 and 7 (the
# shapes `mode` takes) and the messages that name an argument.
GLUE = ("csrc/ops/", "csrc/cpu/phases.cpp", "csrc/cpu/isa.cpp", "csrc/cuda/phases.cpp",
        "csrc/cuda/kernels.cu", "softiou_cuda/route.py", "softiou_cuda/operators.py",
        "softiou_cuda/functional.py", "softiou_cuda/__init__.py",
        "softiou_cuda/distributed.py")
GLUE_MAY_NAME = {("csrc/ops/inputs.h", "mode"), ("csrc/ops/inputs.h", "ignore_index"),
                 ("csrc/ops/inputs.h", "from_logits")}


def _is_glue(path):
    return any(path.startswith(g) if g.endswith("/") else path == g for g in GLUE)


@pytest.mark.parametrize("name", [o.name for o in declared.OPTIONS])
def test_an_option_is_named_in_few_places(name):
    """An option's name appears (as a name or in a message; comments and docstrings aside) in at
    most 8 places of the library outside compat/: the declaration, the user API, the reference,
    each kernel family that reads it, and the glue only where GLUE_MAY_NAME says."""
    files = files_naming(name)
    assert "softiou_cuda/options.py" in files
    assert len(places(files)) <= 8, places(files)
    glue = [f for f in files if _is_glue(f) and (f, name) not in GLUE_MAY_NAME]
    assert glue == [] or name == "backend", glue


def test_no_option_is_read_by_a_hand_counted_position():
    """The options travel by name (generated code reads them by the declaration's order): no
    literal counts of options or arguments, no saved options read back by index."""
    for path, code in CODE.items():
        assert not re.search(r"\bk(Options|Args)\s*=\s*\d+", code), path
        assert not re.search(r"\.get\(\d+\)", code), path
        assert not re.search(r"\binputs\[\d+\]", code), path
        assert not re.search(r"_args\(\)\[:\d+\]", code), path


def test_the_user_api_passes_the_options_in_the_declarations_order():
    """soft_iou_loss hands its options to the options cache positionally (a cache keyed by
    position costs half one keyed by name): in the declaration's order, every one."""
    tree = ast.parse(open(os.path.join(REPO, "softiou_cuda", "api.py")).read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "options"]
    assert calls
    for call in calls:
        assert [a.id for a in call.args] == list(declared.LOSS_FIELDS)


def test_the_generated_code_is_current():
    """csrc/generated/ is what tools/codegen.py writes from the declaration now."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "codegen.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION, reason="the extension is not built")
def test_at_most_eight_operators():
    """The phases (stats, stats_backward, finalize), the loss, and the Triton backend's phases."""
    if softiou_cuda.route.triton_installed():
        softiou_cuda.route.triton_ops()
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("softiou::"))
    assert {"softiou::loss", "softiou::stats", "softiou::stats_backward",
            "softiou::finalize"} <= set(names), names
    assert len(names) <= 8, names


@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION, reason="the extension is not built")
def test_the_schemas_are_the_declarations():
    """The registered schemas are those derived from the declaration (the Triton operators'
    types as torch.library writes them: int as SymInt)."""
    if softiou_cuda.route.triton_installed():
        softiou_cuda.route.triton_ops()
    for op in declared.OPERATORS:
        want = declared.schema(op)
        got = str(getattr(torch.ops.softiou, op.name).default._schema)
        assert _args(got) == _args("softiou::" + want), (got, want)
        if op.name in declared.TRITON_PHASES and softiou_cuda.route.triton_installed():
            triton = str(getattr(torch.ops.softiou, "triton_" + op.name).default._schema)
            assert _args(triton.replace("SymInt", "int")) == \
                _args("softiou::" + declared.schema(op, triton=True)), triton


def _args(schema):
    """(name, type) of a schema's arguments."""
    inside = schema[schema.index("(") + 1:schema.index(") ->")]
    return [tuple(a.split("=")[0].split(" ")[::-1]) for a in inside.split(", ")]


def test_the_readme_is_for_users():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    assert len(text.splitlines()) <= 260
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text)
              if re.search(r"\d", w) and re.search(r"[a-f]", w)]
    assert not hashes, hashes
    for o in declared.OPTIONS:  # every option is in the options table
        assert f"`{o.name}`" in text, o.name


def test_no_commit_hash_in_code_comments():
    """Comments and docstrings are design notes, not measurement logs."""
    for path in CODE:
        with open(os.path.join(REPO, path)) as f:
            text = f.read()
        for word in re.findall(r"\b(?:at|since|commit)\s+([0-9a-f]{7,12})\b", text):
            assert not (re.search(r"\d", word) and re.search(r"[a-f]", word)), (path, word)
