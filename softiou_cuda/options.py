"""Every option of softiou, declared once; and the operators, whose schemas follow from it.

This file is the one source of the options, as PyTorch's ``native_functions.yaml`` is of its
operators: their names, types, defaults, the rules a value must follow (with the message that
names the option), the phases that read them, and a line of meaning. Everything else is derived:

* the Python value :class:`LossOptions` and its validation (``softiou_cuda.api`` builds it);
* the operator schemas of ``softiou::*`` (:func:`schema`), which the C++ library and the Triton
  backend register;
* the C++ options structs, their parsing from the schema's arguments with the same rules and
  messages, and the lists the autograd nodes save: ``tools/codegen.py`` writes them into
  ``csrc/generated/`` when the extension is built.

Standard library only: the build loads this file before torch's extension exists.

Rules are expressions over the options (``C``: the number of classes of the input, and
``has_class_weight``, where an input is at hand). Python evaluates them; ``tools/codegen.py``
translates them into C++. A rule holds for a valid call; its message says what went wrong.
"""

from __future__ import annotations

import ast
import math
import sys
from typing import List, NamedTuple, Optional, Tuple

# The phases of a call (an option is read by one or more):
STATISTICS = "statistics"    # the fused pass over the pixels: softiou::stats, stats_backward
FINALIZE = "finalize"        # from the statistics to the loss: softiou::finalize
COUNTS = "counts"            # the hard counts the statistics pass adds when asked (softiou::stats)
ROUTE = "route"              # which implementation runs: every operator's last argument


class Option(NamedTuple):
    name: str
    type: str                  # schema type: str, bool, float, float?, int?, int[]?
    default: object
    phases: Tuple[str, ...]
    doc: str                   # one line of meaning (SPEC section in parentheses)
    choices: Tuple[str, ...] = ()   # a str option's values
    rule: str = ""             # a float's range, over `v`: "v > 0", "0 <= v < 1"
    what: str = ""             # that range in words, for the message


class Rule(NamedTuple):
    """A condition between options (or an option and the input) that a valid call meets."""
    expr: str
    message: str               # with {name} for a value, {name!r} for a quoted string


OPTIONS: Tuple[Option, ...] = (
    Option("mode", "str", "multiclass", (STATISTICS,),
           "softmax over C (multiclass) or a sigmoid per channel (binary, multilabel) (1-3)",
           choices=("binary", "multiclass", "multilabel")),
    Option("from_logits", "bool", True, (STATISTICS,),
           "the input holds logits; False: probabilities (2)"),
    Option("sharpness", "float", 1.0, (STATISTICS,),
           "a in softmax(a*x), sigmoid(a*x), or x^a / sum x^a for probabilities (2)",
           rule="v > 0", what="a finite number > 0"),
    Option("intersection", "str", "product", (STATISTICS,),
           "t = p*y (product) or min(p, y) (min, exact for soft labels) (3)",
           choices=("product", "min")),
    Option("metric", "str", "jaccard", (FINALIZE,),
           "the score: jaccard, dice, tversky or generalized_dice (4, 10)",
           choices=("jaccard", "dice", "tversky", "generalized_dice")),
    Option("alpha", "float", 0.5, (FINALIZE,), "Tversky weight of the false positives (4)",
           rule="v >= 0", what="a finite number >= 0"),
    Option("beta", "float", 0.5, (FINALIZE,), "Tversky weight of the false negatives (4)",
           rule="v >= 0", what="a finite number >= 0"),
    Option("gamma", "float", 1.0, (FINALIZE,), "focal exponent of each pair's loss (5)",
           rule="v > 0", what="a finite number > 0"),
    Option("log_loss", "bool", False, (FINALIZE,), "-log(score) instead of 1 - score (5)"),
    Option("smooth", "float", 0.0, (FINALIZE,), "additive smoothing of the score (4)",
           rule="v >= 0", what="a finite number >= 0"),
    Option("eps", "float", 1e-7, (FINALIZE,), "lower clamp of the score's denominator (4)",
           rule="v > 0", what="a finite number > 0"),
    Option("classes", "int[]?", None, (FINALIZE,),
           "the class indices that enter the loss; the softmax spans all C (5)"),
    Option("include_background", "bool", True, (FINALIZE,), "False drops class 0 (5)"),
    Option("ignore_index", "int?", None, (STATISTICS,),
           "the target value whose pixels (class maps) or elements count nowhere (3, 10)"),
    Option("per_image", "bool", True, (FINALIZE,),
           "a score per (image, class); False: per class over the batch (4)"),
    Option("absent", "str", "include", (FINALIZE,),
           "pairs without target pixels: kept, excluded, or loss 0 kept in the mean (5, 10)",
           choices=("include", "exclude", "zero")),
    Option("reduction", "str", "mean", (FINALIZE,),
           "mean, sum, or none: the loss of every pair (5)",
           choices=("mean", "sum", "none")),
    Option("ce_weight", "float", 0.0, (STATISTICS, FINALIZE),
           "lambda: adds lambda times the cross-entropy, summed in the same passes (9)",
           rule="v >= 0", what="a finite number >= 0"),
    Option("label_smoothing", "float", 0.0, (STATISTICS,),
           "epsilon of the multiclass cross-entropy (9)",
           rule="0 <= v < 1", what="a number in [0, 1)"),
    Option("squared", "bool", False, (STATISTICS,),
           "P and Y sum p^2 and y^2 (MONAI's squared_pred) (10)"),
    Option("smooth_dr", "float?", None, (FINALIZE,),
           "the denominator's smoothing where it differs from smooth (10)",
           rule="v >= 0", what="a finite number >= 0 or None"),
    Option("weighted_mean", "bool", True, (FINALIZE,),
           "the mean divides by the class weights used; False: by the pairs (10)"),
    Option("w_type", "str", "square", (FINALIZE,),
           "the generalized Dice score's class weights 1/Y^2, 1/Y or 1 (10)",
           choices=("square", "simple", "uniform")),
    Option("ce_pos_weight", "float", 1.0, (STATISTICS,),
           "pos_weight of the binary cross-entropy (10)",
           rule="v >= 0", what="a finite number >= 0"),
    Option("threshold", "float", 0.5, (COUNTS,),
           "binary/multilabel hard prediction: sigmoid(x) > threshold, or x > threshold for "
           "probabilities (11)", rule="0 < v < 1", what="a number in (0, 1)"),
    Option("return_stat_scores", "bool", False, (COUNTS,),
           "also return the hard tp, fp, tn, fn per (sample, class), counted in the same pass "
           "(11)"),
    Option("backend", "str", "auto", (ROUTE,),
           "the implementation: auto (the fused kernels of the tensor's device), cpu, cuda, "
           "triton or reference", choices=("auto", "cpu", "cuda", "triton", "reference")),
)

RULES: Tuple[Rule, ...] = (
    Rule("from_logits or ce_weight == 0",
         "ce_weight > 0 needs from_logits=True: the cross-entropy is of logits"),
    Rule("reduction != 'none' or ce_weight == 0",
         "ce_weight > 0 needs reduction='mean' or 'sum': the cross-entropy and the per-pair "
         "losses of reduction='none' have different shapes"),
    Rule("mode == 'multiclass' or label_smoothing == 0",
         "label_smoothing must be 0 in {mode} mode (binary cross-entropy); got {label_smoothing}"),
    Rule("mode != 'multiclass' or ce_pos_weight == 1",
         "ce_pos_weight is the binary cross-entropy's; it must be 1 in multiclass mode; got "
         "{ce_pos_weight}"),
    Rule("metric != 'generalized_dice' or absent == 'include'",
         "absent must be 'include' with metric='generalized_dice'; got {absent!r}"),
    # with the input at hand
    Rule("mode != 'multiclass' or ignore_index is None or not dense_target",
         "ignore_index applies to class maps and to binary/multilabel targets; a dense "
         "multiclass target has none (leave pixels out with weight)"),
    Rule("not per_image or not has_process_group",
         "process_group needs per_image=False: the statistics summed over ranks are those of "
         "the whole batch"),
    Rule("include_background or C != 1",
         "include_background=False drops class 0, the only class of this input"),
    Rule("classes is None or max(classes) < C",
         "classes must be indices in [0, {C}); got {classes}"),
    Rule("metric != 'generalized_dice' or not has_class_weight",
         "class_weight must be None with metric='generalized_dice': its class weights come "
         "from the target (w_type)"),
)

# Names a rule may read besides the options, known where an input is at hand: the statistics
# pass knows whether the target is dense; the finalize step the number of classes and whether a
# class_weight is given; a call whether it has a process group.
STATS_INPUTS = ("dense_target",)
FINALIZE_INPUTS = ("C", "has_class_weight")
CALL_INPUTS = ("has_process_group",)
INPUT_NAMES = STATS_INPUTS + FINALIZE_INPUTS + CALL_INPUTS

# The rules of a list of class indices (type int[]?), by what they refuse; the C++ side also
# bounds the indices by the set it keeps them in (csrc/option_types.h).
CLASS_LIST_RULES = {
    "empty or negative": "must be a non-empty sequence of class indices >= 0",
    "repeated": "must not repeat a class",
}

BY_NAME = {o.name: o for o in OPTIONS}

# ---------------------------------------------------------------------------------------------
# The operators. Each takes tensors, then the options of its phases in declaration order, then
# the backend: the schemas below are derived, never written by hand.
# ---------------------------------------------------------------------------------------------


class Operator(NamedTuple):
    name: str
    tensors: str          # the leading tensor arguments, as in a schema
    phases: Tuple[str, ...]
    returns: str
    doc: str


OPERATORS: Tuple[Operator, ...] = (
    Operator("loss", "Tensor input, Tensor target, Tensor? weight=None, "
             "Tensor? class_weight=None", (STATISTICS, FINALIZE), "Tensor",
             "the loss: the statistics pass and the finalize step forward, one gradient pass "
             "backward"),
    Operator("stats", "Tensor input, Tensor target, Tensor? weight=None, "
             "Tensor? class_weight=None", (STATISTICS, COUNTS),
             "(Tensor stats, Tensor ce, Tensor stat_scores)",
             "the statistics pass: I, P, Y per (sample, class) [N, C, 3], the "
             "cross-entropy's numerator and denominator per sample [N, 2] (zeros unless "
             "ce_weight > 0), and with return_stat_scores the hard tp, fp, tn, fn per (sample, "
             "class) [N, C, 4] int64 (else [0])"),
    Operator("stats_backward", "Tensor grad_stats, Tensor? grad_ce, Tensor? grad_out, "
             "Tensor input, Tensor target, Tensor? weight=None, Tensor? class_weight=None",
             (STATISTICS,), "Tensor",
             "the gradient pass: the input's gradient from d/d(I, P, Y) ([N or 1, C, 3]) and "
             "d/d(cross-entropy sums) ([N or 1, 2]), both times grad_out (the loss's gradient, "
             "broadcast over [rows, C]) when given"),
    Operator("finalize", "Tensor stats, Tensor? ce=None, Tensor? class_weight=None",
             (FINALIZE,), "(Tensor loss, Tensor coef, Tensor ce_coef)",
             "the finalize step: the loss from the statistics (and the cross-entropy sums), and "
             "its derivatives in them: coef [rows, C, 3], ce_coef [1, 2]"),
)

# the Triton backend registers the phases under these names, with the same arguments (minus the
# backend, which routes to them)
TRITON_PREFIX = "triton_"
TRITON_PHASES = ("stats", "stats_backward", "finalize")


def options_of(phases) -> Tuple[Option, ...]:
    """The options an operator of these phases takes, in declaration order (the route last)."""
    return tuple(o for o in OPTIONS if set(o.phases) & set(phases))


def _literal(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return '"' + value + '"'
    if value is None:
        return "None"
    return repr(value)


def schema(op: Operator, triton: bool = False) -> str:
    """The operator's schema: its tensors, its phases' options with their defaults, the backend
    (not for the Triton kernels' operators, which are a backend)."""
    args = [op.tensors]
    for o in options_of(op.phases + (() if triton else (ROUTE,))):
        args.append(f"{o.type} {o.name}={_literal(o.default)}")
    name = (TRITON_PREFIX if triton else "") + op.name
    return f"{name}({', '.join(args)}) -> {op.returns}"


# ---------------------------------------------------------------------------------------------
# The rules, as Python. (tools/codegen.py turns the same expressions into C++.)
# ---------------------------------------------------------------------------------------------


def rule_names(expr: str) -> Tuple[str, ...]:
    """The names an expression reads (options, input names), in order of appearance."""
    seen = []
    for n in ast.walk(ast.parse(expr, mode="eval")):
        if isinstance(n, ast.Name) and n.id != "max" and n.id not in seen:
            seen.append(n.id)
    return tuple(seen)


def rules_for(names) -> Tuple[Rule, ...]:
    """The rules that read only these names (those a phase can check)."""
    return tuple(r for r in RULES if set(rule_names(r.expr)) <= set(names))


def _finite(v) -> bool:
    # by comparisons, not math.isfinite: under torch.compile a float that changes between calls
    # is symbolic, and comparisons are what it can guard on
    return -sys.float_info.max <= v <= sys.float_info.max


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _function(params, expr):
    """A function of the names `params` evaluating `expr`, made once: torch.compile traces it
    like any other."""
    return eval(f"lambda {', '.join(params)}: {expr}", {"max": max})


def _value_check(o: Option):
    """A function of a value: the message for a value the option's type or rule refuses, or
    None."""
    if o.type == "str":
        allowed = ", ".join(map(repr, o.choices))

        def bad(value):
            if not isinstance(value, str) or value not in o.choices:
                return f"{o.name} must be one of {allowed}; got {value!r}"
    elif o.type == "bool":
        def bad(value):
            if not isinstance(value, bool):
                return f"{o.name} must be a bool; got {value!r}"
    elif o.type in ("float", "float?"):
        in_range = _function(("v",), o.rule)

        def bad(value):
            if value is None and o.type == "float?":
                return None
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and _finite(value) and in_range(value)):
                return f"{o.name} must be {o.what}; got {value!r}"
    elif o.type == "int?":
        def bad(value):
            if value is not None and not _is_int(value):
                return f"{o.name} must be an int or None; got {value!r}"
    else:  # int[]?: a set of class indices
        def bad(value):
            if value is None:
                return None
            listed = tuple(value) if isinstance(value, (list, tuple)) else ()
            if not listed or not all(_is_int(c) and c >= 0 for c in listed):
                return f"{o.name} {CLASS_LIST_RULES['empty or negative']}; got {value!r}"
            if len(set(listed)) != len(listed):
                return f"{o.name} {CLASS_LIST_RULES['repeated']}; got {list(listed)}"
    return bad


_VALUE_CHECKS = {o.name: _value_check(o) for o in OPTIONS}
_RULE_CHECKS = tuple((r, rule_names(r.expr), _function(rule_names(r.expr), r.expr))
                     for r in RULES)


def format_message(message: str, values: dict) -> str:
    return message.format(**{k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in values.items()})


def check(values: dict, **inputs) -> None:
    """Raises a ValueError naming the option for the first value or rule this call breaks.
    ``values``: options by name (a subset: the rules over other names are left to whoever holds
    them); ``inputs``: names of INPUT_NAMES, where an input is at hand."""
    for name, value in values.items():
        message = _VALUE_CHECKS[name](value)
        if message is not None:
            raise ValueError("softiou: " + message)
    _check_rules(dict(values, **inputs), None)


def check_input(values: dict, **inputs) -> None:
    """The rules that read these input names (``values``: options already checked)."""
    _check_rules(dict(values, **inputs), set(inputs))


def _check_rules(scope: dict, reading) -> None:
    for rule, names, holds in _RULE_CHECKS:
        if reading is not None and reading.isdisjoint(names):
            continue
        if all(n in scope for n in names) and not holds(*(scope[n] for n in names)):
            raise ValueError("softiou: " + format_message(rule.message, scope))


def _annotation(o: Option):
    return {"str": str, "bool": bool, "float": float, "float?": Optional[float],
            "int?": Optional[int], "int[]?": Optional[List[int]]}[o.type]


# The options of softiou::loss (every option but the counts' and the route), in schema order: what
# it takes after its tensors, before the backend. A NamedTuple, so that TorchScript takes it as a type (softiou_cuda.compat's modules
# are scriptable) and torch.compile as a constant.
_LOSS_OPTIONS = options_of((STATISTICS, FINALIZE))
LossOptions = NamedTuple("LossOptions", [(o.name, _annotation(o)) for o in _LOSS_OPTIONS])
LossOptions.__new__.__defaults__ = tuple(o.default for o in _LOSS_OPTIONS)
LossOptions._field_defaults = dict(zip(LossOptions._fields, LossOptions.__new__.__defaults__))
LossOptions.__module__ = __name__
LossOptions.__doc__ = ("The options of a loss (every declared option but the counts' and the "
                       "backend), in the schema order of softiou::loss. Made and validated by "
                       "make_options.")

LOSS_FIELDS = LossOptions._fields
STATS_FIELDS = tuple(o.name for o in options_of((STATISTICS,)))
FINALIZE_FIELDS = tuple(o.name for o in options_of((FINALIZE,)))
COUNTS_FIELDS = tuple(o.name for o in options_of((COUNTS,)))
# the counts' option that asks for them (the others say how to count)
RETURNS_COUNTS = "return_stat_scores"


def stats_args(o: LossOptions) -> tuple:
    """The statistics phase's options (softiou::stats_backward's, before the backend), in schema
    order."""
    return tuple(getattr(o, name) for name in STATS_FIELDS)


def counts_args(threshold: float = BY_NAME["threshold"].default,
                return_stat_scores: bool = BY_NAME["return_stat_scores"].default) -> tuple:
    """The counts' options, which softiou::stats takes after the statistics phase's (before the
    backend), in schema order."""
    values = {"threshold": threshold, "return_stat_scores": return_stat_scores}
    return tuple(values[name] for name in COUNTS_FIELDS)


def finalize_args(o: LossOptions) -> tuple:
    """The options of softiou::finalize (before the backend), in schema order."""
    return tuple(getattr(o, name) for name in FINALIZE_FIELDS)


def named(fields, args, kwargs) -> dict:
    """An operator's options by name, from the values it was called with (positional, in schema
    order, then by name); the rest take their defaults."""
    values = {name: BY_NAME[name].default for name in fields}
    values.update(zip(fields, args))
    values.update(kwargs)
    return values


def make_options(**values) -> LossOptions:
    """The options, validated (SPEC section 7: a ValueError naming the option), as one
    :class:`LossOptions`; ``classes`` becomes a tuple. Options not given take their defaults."""
    unknown = set(values) - set(LOSS_FIELDS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    o = LossOptions(**values)
    check(o._asdict())
    if o.classes is not None:
        o = o._replace(classes=tuple(o.classes))
    return o


# ---------------------------------------------------------------------------------------------
# What follows from the options for the shapes and the passes (csrc/finalize.h and
# csrc/kernel_args.h say the same for the kernels)
# ---------------------------------------------------------------------------------------------
def input_classes(shape, mode: str) -> int:
    """C of an input of this shape (binary [N, *S] input has one class, SPEC section 1)."""
    if mode == "binary" and not (len(shape) >= 3 and shape[1] == 1):
        return 1
    return shape[1]


def loss_shape(rows: int, num_classes: int, per_image: bool, reduction: str,
               metric: str = "jaccard") -> tuple:
    """The loss: [] for mean and sum; [N, C] per image or [C] pooled for none ([N, 1] or [1]
    for the generalized Dice score, one value per row) (SPEC sections 5, 10)."""
    if reduction != "none":
        return ()
    cols = 1 if metric == "generalized_dice" else num_classes
    return (rows, cols) if per_image else (cols,)


def stats_shapes(input_shape, values: dict) -> tuple:
    """The shapes of softiou::stats' outputs (stats, ce, stat_scores) for an input of this shape
    and its options by name."""
    N, C = input_shape[0], input_classes(input_shape, values["mode"])
    return (N, C, 3), (N, 2), ((N, C, 4) if values["return_stat_scores"] else (0,))


def finalize_shapes(rows: int, num_classes: int, values: dict) -> tuple:
    """The shapes of softiou::finalize's outputs (loss, coef, ce_coef) for statistics
    [rows, C, 3] and its options by name."""
    per_image = values["per_image"]
    loss = loss_shape(rows, num_classes, per_image, values["reduction"], values["metric"])
    return loss, (rows if per_image else 1, num_classes, 3), (1, 2)


def docs() -> str:
    """The options as a Markdown table (name, default, meaning)."""
    rows = ["| option | default | meaning (SPEC section) |", "|---|---|---|"]
    for o in OPTIONS:
        rows.append(f"| `{o.name}` | `{o.default!r}` | {o.doc} |")
    return "\n".join(rows)


assert all(math.isfinite(o.default) for o in OPTIONS if o.type == "float")
