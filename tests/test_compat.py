"""softiou_cuda.compat against the peers' own code: MONAI 1.6's DiceLoss, TverskyLoss,
GeneralizedDiceLoss and DiceCELoss, segmentation_models_pytorch 0.6's DiceLoss, JaccardLoss and
TverskyLoss, run on the same float64 inputs over random configurations; the loss and the gradient
of the input agree to float64 rounding. The peers come from requirements/peers-test.txt (installed without their
dependencies: their losses need only torch and numpy)."""

import importlib.util
import pathlib
import random
import warnings

import pytest
import torch

from softiou_cuda.compat import monai as cm
from softiou_cuda.compat import smp as cs

monai_losses = pytest.importorskip("monai.losses")


def _smp_losses():
    """segmentation_models_pytorch.losses without the package's __init__ (which imports timm
    and the models): the losses subpackage alone, loaded from its files."""
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "losses"
    name = "_smp_losses_under_test"
    sub = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(sub)
    import sys
    sys.modules[name] = module
    sub.loader.exec_module(module)
    return module


smp_losses = _smp_losses()
needs_smp = pytest.mark.skipif(smp_losses is None, reason="segmentation_models_pytorch missing")

RTOL, ATOL = 1e-8, 1e-11


def _run(loss_fn, x, t):
    x = x.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the peers warn per call about ignored options
        loss = loss_fn(x, t)
    (loss * torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)).sum() \
        .backward()
    return loss.detach(), x.grad


def _agree(peer, ours, x, t, rtol=RTOL, atol=ATOL):
    lp, gp = _run(peer, x, t)
    lo, go = _run(ours, x, t)
    assert lo.shape == lp.shape
    torch.testing.assert_close(lo, lp, rtol=rtol, atol=atol)
    torch.testing.assert_close(go, gp, rtol=rtol, atol=atol)


def _spatial(rng):
    return (rng.choice([3, 5]), rng.choice([4, 7])) + ((rng.choice([2, 3]),) if rng.random() < 0.4
                                                       else ())


def _labels(rng, N, C, S, absent=True):
    """A label map [N, *S]; with `absent` some classes are missing from some images."""
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    hi = C if not absent or C < 3 else C - 1
    return torch.randint(0, hi, (N,) + S, generator=g)


def _monai_case(rng, C, activation):
    N, S = rng.choice([1, 2, 3]), _spatial(rng)
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    x = torch.randn((N, C) + S, dtype=torch.float64, generator=g) * 2
    if activation == "none" or (activation == "softmax" and C == 1):  # probabilities
        x = torch.rand((N, C) + S, dtype=torch.float64, generator=g)
    return x, N, S, g


def _monai_target(rng, g, cfg, N, C, S, label_dtype):
    """The target of a DiceLoss / TverskyLoss configuration and its ignore_index: a label map
    [N, 1, *S] (to_onehot_y; MONAI's are often float), a one-channel mask, or a one-hot / soft
    target with a class channel or a sentinel for ignore_index (MONAI's mask)."""
    labels = _labels(rng, N, C, S)
    ignore_index = None
    if cfg["to_onehot_y"] and C > 1:
        t = labels[:, None].to(label_dtype)
        if cfg["ignore"] is not None:
            ignore_index = 1 if cfg["ignore"] == "class" else 255
            t[torch.rand(t.shape, generator=g) < 0.2] = ignore_index
    elif C == 1:
        t = (torch.rand((N, 1) + S, generator=g) < 0.4).to(torch.float64)
        if cfg["soft_label"]:
            t = torch.rand((N, 1) + S, dtype=torch.float64, generator=g)
        if cfg["ignore"] is not None:
            ignore_index = 255
            t[torch.rand(t.shape, generator=g) < 0.2] = 255
    else:
        t = torch.nn.functional.one_hot(labels, C).movedim(-1, 1).to(torch.float64)
        if cfg["soft_label"]:
            t = torch.softmax(3 * torch.randn(t.shape, dtype=torch.float64, generator=g), 1)
        if cfg["ignore"] == "class":
            ignore_index = 1
        elif cfg["ignore"] == "sentinel":
            ignore_index = -1
            t[:, :, 0] = 0  # a row of pixels without any class
    return t, ignore_index


# ---------------------------------------------------------------------------------------------
# MONAI DiceLoss
# ---------------------------------------------------------------------------------------------
def _dice_configs(count=48, seed=1):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        out.append(dict(
            C=rng.choice([1, 2, 4]), activation=rng.choice(["sigmoid", "softmax", "none"]),
            to_onehot_y=rng.random() < 0.5, include_background=rng.random() < 0.6,
            squared_pred=rng.random() < 0.3, jaccard=rng.random() < 0.5,
            reduction=rng.choice(["mean", "sum", "none"]), batch=rng.random() < 0.4,
            weight=rng.choice([None, None, "list", "scalar"]), soft_label=rng.random() < 0.3,
            ignore=rng.choice([None, None, "class", "sentinel"]),
            smooth=rng.choice([(1e-5, 1e-5), (0.0, 1e-3), (0.5, 1.0)]), seed=rng.randrange(1 << 30)))
    return out


@pytest.mark.parametrize("cfg", _dice_configs(), ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items() if k != "seed"))
def test_monai_dice_loss(cfg):
    rng = random.Random(cfg["seed"])
    C, act = cfg["C"], cfg["activation"]
    x, N, S, g = _monai_case(rng, C, act)
    kept = C - 1 if not cfg["include_background"] and C > 1 else C
    weight = None
    if cfg["weight"] == "list":
        weight = [rng.uniform(0.2, 2.0) for _ in range(kept)]
    elif cfg["weight"] == "scalar":
        weight = 0.7
    t, ignore_index = _monai_target(rng, g, cfg, N, C, S, label_dtype=torch.float64)
    kwargs = dict(include_background=cfg["include_background"],
                  to_onehot_y=cfg["to_onehot_y"], sigmoid=act == "sigmoid",
                  softmax=act == "softmax", squared_pred=cfg["squared_pred"], jaccard=cfg["jaccard"],
                  reduction=cfg["reduction"], smooth_nr=cfg["smooth"][0],
                  smooth_dr=cfg["smooth"][1], batch=cfg["batch"], weight=weight,
                  soft_label=cfg["soft_label"], ignore_index=ignore_index)
    tol = {}
    if cfg["squared_pred"] and cfg["to_onehot_y"] and C > 1:
        # MONAI's one_hot is float32, and with squared_pred its norm of the target is taken in
        # float32 (squared after a square root): MONAI's own error, ~1e-7 relative
        tol = dict(rtol=2e-6, atol=1e-9)
    _agree(monai_losses.DiceLoss(**kwargs), cm.DiceLoss(**kwargs), x, t, **tol)


# ---------------------------------------------------------------------------------------------
# MONAI TverskyLoss
# ---------------------------------------------------------------------------------------------
def _tversky_configs(count=32, seed=6):
    rng = random.Random(seed)
    return [dict(C=rng.choice([1, 2, 4]), activation=rng.choice(["sigmoid", "softmax", "none"]),
                 to_onehot_y=rng.random() < 0.5, include_background=rng.random() < 0.6,
                 alpha_beta=rng.choice([(0.5, 0.5), (0.3, 0.7), (1.0, 1.0), (0.0, 2.0)]),
                 reduction=rng.choice(["mean", "sum", "none"]), batch=rng.random() < 0.4,
                 soft_label=rng.random() < 0.3, ignore=rng.choice([None, None, "class", "sentinel"]),
                 smooth=rng.choice([(1e-5, 1e-5), (0.0, 1e-3), (0.5, 1.0)]),
                 seed=rng.randrange(1 << 30))
            for _ in range(count)]


@pytest.mark.parametrize("cfg", _tversky_configs(), ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items() if k != "seed"))
def test_monai_tversky_loss(cfg):
    rng = random.Random(cfg["seed"])
    C, act = cfg["C"], cfg["activation"]
    x, N, S, g = _monai_case(rng, C, act)
    t, ignore_index = _monai_target(rng, g, cfg, N, C, S, label_dtype=torch.int64)
    alpha, beta = cfg["alpha_beta"]
    kwargs = dict(include_background=cfg["include_background"], to_onehot_y=cfg["to_onehot_y"],
                  sigmoid=act == "sigmoid", softmax=act == "softmax", alpha=alpha, beta=beta,
                  reduction=cfg["reduction"], smooth_nr=cfg["smooth"][0],
                  smooth_dr=cfg["smooth"][1], batch=cfg["batch"], soft_label=cfg["soft_label"],
                  ignore_index=ignore_index)
    _agree(monai_losses.TverskyLoss(**kwargs), cm.TverskyLoss(**kwargs), x, t)


@pytest.mark.parametrize("loss,options", [
    ("DiceLoss", dict(weight=[0.5, 1.0, 2.0])),
    ("DiceLoss", dict(weight=[0.5, 1.0, 2.0], squared_pred=True)),
    ("DiceLoss", dict(weight=[0.5, 1.0, 2.0], soft_label=True)),
    ("TverskyLoss", dict(alpha=0.3, beta=0.7)),
    ("TverskyLoss", dict(alpha=0.3, beta=0.7, soft_label=True)),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_monai_soft_target_masked_by_a_class(loss, options):
    """ignore_index a class of a soft dense target: MONAI's mask 1 - y[:, ignore_index] is
    fractional (the three ways of carrying it: the weight, its square, the target sums)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g)
    t = torch.softmax(2 * torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g), 1)
    kwargs = dict(softmax=True, ignore_index=2, **options)
    _agree(getattr(monai_losses, loss)(**kwargs), getattr(cm, loss)(**kwargs), x, t)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_monai_dice_loss_other_backends(backend):
    import softiou_cuda
    if backend not in softiou_cuda.available_backends(torch.device("cpu")):
        pytest.skip(f"{backend} cannot run here")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g)
    t = torch.randint(0, 3, (2, 1, 4, 5), generator=g)
    kwargs = dict(softmax=True, to_onehot_y=True, include_background=False, jaccard=True,
                  weight=[1.0, 3.0])
    _agree(monai_losses.DiceLoss(**kwargs), cm.DiceLoss(**kwargs, backend=backend), x, t)


# ---------------------------------------------------------------------------------------------
# MONAI GeneralizedDiceLoss
# ---------------------------------------------------------------------------------------------
def _gdl_configs(count=24, seed=2):
    rng = random.Random(seed)
    return [dict(C=rng.choice([1, 3, 4]), activation=rng.choice(["sigmoid", "softmax", "none"]),
                 to_onehot_y=rng.random() < 0.5, include_background=rng.random() < 0.6,
                 w_type=rng.choice(["square", "simple", "uniform"]),
                 reduction=rng.choice(["mean", "sum", "none"]), batch=rng.random() < 0.4,
                 soft_label=rng.random() < 0.3, seed=rng.randrange(1 << 30))
            for _ in range(count)]


@pytest.mark.parametrize("cfg", _gdl_configs(), ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items() if k != "seed"))
def test_monai_generalized_dice_loss(cfg):
    rng = random.Random(cfg["seed"])
    C, act = cfg["C"], cfg["activation"]
    x, N, S, g = _monai_case(rng, C, act)
    labels = _labels(rng, N, C, S)  # absent classes: infinite weights
    if cfg["to_onehot_y"] and C > 1:
        t = labels[:, None]
    elif C == 1:
        t = (torch.rand((N, 1) + S, generator=g) < 0.4).to(torch.float64)
    else:
        t = torch.nn.functional.one_hot(labels, C).movedim(-1, 1).to(torch.float64)
    if cfg["soft_label"] and not (cfg["to_onehot_y"] and C > 1):
        t = t * torch.rand(t.shape, dtype=torch.float64, generator=g)
    kwargs = dict(include_background=cfg["include_background"], to_onehot_y=cfg["to_onehot_y"],
                  sigmoid=act == "sigmoid", softmax=act == "softmax", w_type=cfg["w_type"],
                  reduction=cfg["reduction"], batch=cfg["batch"], soft_label=cfg["soft_label"])
    _agree(monai_losses.GeneralizedDiceLoss(**kwargs), cm.GeneralizedDiceLoss(**kwargs), x, t)


# ---------------------------------------------------------------------------------------------
# MONAI DiceCELoss
# ---------------------------------------------------------------------------------------------
def _dice_ce_configs(count=32, seed=3):
    rng = random.Random(seed)
    return [dict(C=rng.choice([1, 2, 4]), activation=rng.choice(["sigmoid", "softmax", "softmax",
                                                                  "none"]),
                 to_onehot_y=rng.random() < 0.6, include_background=rng.random() < 0.6,
                 squared_pred=rng.random() < 0.2, jaccard=rng.random() < 0.4,
                 reduction=rng.choice(["mean", "sum"]), batch=rng.random() < 0.3,
                 weight=rng.random() < 0.4, lambdas=rng.choice([(1.0, 1.0), (0.7, 2.0),
                                                                (1.0, 0.0), (0.0, 1.0)]),
                 label_smoothing=rng.choice([0.0, 0.0, 0.1]), seed=rng.randrange(1 << 30))
            for _ in range(count)]


@pytest.mark.parametrize("cfg", _dice_ce_configs(), ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items() if k != "seed"))
def test_monai_dice_ce_loss(cfg):
    rng = random.Random(cfg["seed"])
    C, act = cfg["C"], cfg["activation"]
    x, N, S, g = _monai_case(rng, C, "logits")
    if act == "none" or (act == "softmax" and C == 1):
        x = torch.rand(x.shape, dtype=torch.float64, generator=g)
    labels = _labels(rng, N, C, S)
    if C == 1:
        t = (torch.rand((N, 1) + S, generator=g) < 0.4).to(torch.float64)
    elif cfg["to_onehot_y"]:
        t = labels[:, None]
    else:
        t = torch.nn.functional.one_hot(labels, C).movedim(-1, 1).to(torch.float64)
    weight = None
    if cfg["weight"]:
        weight = torch.tensor([rng.uniform(0.3, 2.0) for _ in range(C)], dtype=torch.float64)
    kwargs = dict(include_background=cfg["include_background"],
                  to_onehot_y=cfg["to_onehot_y"] and C > 1, sigmoid=act == "sigmoid",
                  softmax=act == "softmax", squared_pred=cfg["squared_pred"],
                  jaccard=cfg["jaccard"], reduction=cfg["reduction"], batch=cfg["batch"],
                  weight=weight, lambda_dice=cfg["lambdas"][0], lambda_ce=cfg["lambdas"][1],
                  label_smoothing=cfg["label_smoothing"])
    tol = {}
    if cfg["squared_pred"] and kwargs["to_onehot_y"]:  # see test_monai_dice_loss
        tol = dict(rtol=2e-6, atol=1e-9)
    _agree(monai_losses.DiceCELoss(**kwargs), cm.DiceCELoss(**kwargs), x, t, **tol)


def test_monai_dice_ce_is_one_fused_call():
    """softmax with several classes, and sigmoid with one: the loss op alone (one
    softiou::loss in the autograd graph, no eager cross-entropy)."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 1, 4, 4))
    loss = cm.DiceCELoss(softmax=True, to_onehot_y=True)(x, t)
    names, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        names.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    assert not any("NllLoss" in n or "LogSoftmax" in n for n in names), names


# ---------------------------------------------------------------------------------------------
# MONAI: errors and warnings
# ---------------------------------------------------------------------------------------------
def test_monai_argument_errors():
    with pytest.raises(ValueError, match="more than 1"):
        cm.DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(TypeError, match="other_act"):
        cm.DiceLoss(other_act=3)
    for cls in (cm.DiceLoss, cm.TverskyLoss, cm.GeneralizedDiceLoss, cm.DiceCELoss):
        with pytest.raises(ValueError, match="other_act"):
            cls(other_act=torch.tanh)
    with pytest.raises(ValueError, match="alpha"):  # a weight: MONAI computes with it
        cm.TverskyLoss(softmax=True, alpha=-0.5)(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="reduction"):
        cm.DiceLoss(reduction="max")
    with pytest.raises(ValueError, match="no less than 0"):
        cm.DiceLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="reduction"):
        cm.DiceCELoss(reduction="none")
    with pytest.raises(ValueError, match="lambda_ce"):
        cm.DiceCELoss(lambda_ce=-1.0)
    with pytest.raises(ValueError, match="length of the `weight`"):
        cm.DiceLoss(softmax=True, weight=[1.0, 2.0])(torch.randn(1, 3, 4, 4),
                                                     torch.rand(1, 3, 4, 4))
    with pytest.raises(AssertionError, match="different shape"):
        cm.DiceLoss(softmax=True)(torch.randn(1, 3, 4, 4), torch.rand(1, 2, 4, 4))


def test_monai_single_channel_warns_once_per_module():
    loss = cm.DiceLoss(softmax=True)
    x, t = torch.rand(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    with pytest.warns(UserWarning, match="softmax=True` ignored"):
        loss(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(x, t)


SCRIPTED = [
    ("DiceLoss", dict(), "probabilities"),  # MONAI's own test_script: ones, one channel
    ("DiceLoss", dict(softmax=True, to_onehot_y=True, weight=[1.0, 2.0, 0.5], jaccard=True),
     "labels"),
    ("DiceLoss", dict(sigmoid=True, squared_pred=True, reduction="none", batch=True), "onehot"),
    ("TverskyLoss", dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7,
                         include_background=False, ignore_index=1), "labels"),
    ("GeneralizedDiceLoss", dict(softmax=True, to_onehot_y=True, w_type="simple"), "labels"),
    ("DiceCELoss", dict(softmax=True, to_onehot_y=True, weight=torch.tensor([1.0, 2.0, 0.5])),
     "labels"),
]


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
@pytest.mark.parametrize("loss,options,target", SCRIPTED,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SCRIPTED)])
def test_monai_losses_script_save_and_load(loss, options, target, tmp_path):
    """torch.jit.script of the modules, as MONAI's test suite does (test_script_save): the
    scripted module, saved and loaded again, computes MONAI's loss."""
    g = torch.Generator().manual_seed(11)
    if target == "probabilities":
        x = torch.ones(2, 1, 8, 8)
        t = torch.ones(2, 1, 8, 8)
    else:
        x = torch.randn(2, 3, 8, 8, generator=g)
        labels = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
        t = labels if target == "labels" else \
            torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    ours = getattr(cm, loss)(**options)
    scripted = torch.jit.script(ours)
    torch.jit.save(scripted, str(tmp_path / "loss.pt"))
    loaded = torch.jit.load(str(tmp_path / "loss.pt"))
    want = getattr(monai_losses, loss)(**options)(x, t)
    for got in (scripted(x, t), loaded(x, t), ours(x, t)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# segmentation_models_pytorch
# ---------------------------------------------------------------------------------------------
def _smp_configs(count=48, seed=4):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        mode = rng.choice(["binary", "multiclass", "multilabel"])
        out.append(dict(
            loss=rng.choice(["DiceLoss", "JaccardLoss", "TverskyLoss"]), mode=mode,
            C=1 if mode == "binary" else rng.choice([2, 4]),
            classes=None if mode == "binary" or rng.random() < 0.6 else "pick",
            class_weights=None if mode == "binary" or rng.random() < 0.6 else "pick",
            log_loss=rng.random() < 0.3, from_logits=rng.random() < 0.75,
            smooth=rng.choice([0.0, 0.0, 1.0]), ignore=rng.random() < 0.4,
            eps=rng.choice([1e-7, 1e-3]), tversky=(rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0),
                                                   rng.choice([1.0, 0.75, 2.0])),
            seed=rng.randrange(1 << 30)))
    return out


@needs_smp
@pytest.mark.parametrize("cfg", _smp_configs(), ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items() if k != "seed"))
def test_smp_losses(cfg):
    rng = random.Random(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    C, mode = cfg["C"], cfg["mode"]
    N, S = rng.choice([1, 2, 3]), _spatial(rng)
    x = torch.randn((N, C) + S, dtype=torch.float64, generator=g) * 2
    if not cfg["from_logits"]:
        x = torch.rand(x.shape, dtype=torch.float64, generator=g)
    ignore_index = 255 if cfg["ignore"] else None
    if mode == "multiclass":
        t = _labels(rng, N, C, S)
    elif mode == "binary":
        t = (torch.rand((N,) + S, generator=g) < 0.4).to(torch.float64)
        if rng.random() < 0.5:
            t = t[:, None]
    else:
        t = (torch.rand((N, C) + S, generator=g) < 0.3).to(torch.float64)
        t[:, 0] = 0  # an absent class
    if ignore_index is not None:
        t[torch.rand(t.shape, generator=g) < 0.2] = ignore_index
    kwargs = dict(mode=mode, log_loss=cfg["log_loss"], from_logits=cfg["from_logits"],
                  smooth=cfg["smooth"], ignore_index=ignore_index, eps=cfg["eps"])
    if cfg["classes"] == "pick":
        kwargs["classes"] = [rng.randrange(-C, C) for _ in range(rng.choice([1, 2, 3]))]
    if cfg["class_weights"] == "pick":
        kwargs["class_weights"] = [rng.uniform(0.2, 2.0) for _ in range(C)]
    if cfg["loss"] == "TverskyLoss":
        kwargs.update(alpha=cfg["tversky"][0], beta=cfg["tversky"][1], gamma=cfg["tversky"][2])
    peer = getattr(smp_losses, cfg["loss"])(**kwargs)
    ours = getattr(cs, cfg["loss"])(**kwargs)
    _agree(peer, ours, x, t)


@needs_smp
def test_smp_single_class_weight_is_the_sum():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g)
    t = torch.randint(0, 3, (2, 5, 5), generator=g)
    kwargs = dict(mode="multiclass", class_weights=[2.5])
    _agree(smp_losses.JaccardLoss(**kwargs), cs.JaccardLoss(**kwargs), x, t)


def test_smp_argument_errors():
    with pytest.raises(ValueError, match="class_weights"):
        cs.DiceLoss("binary", class_weights=[1.0])
    with pytest.raises(ValueError, match="classes"):
        cs.JaccardLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="mode"):
        cs.DiceLoss("multi")
    with pytest.raises(ValueError, match="one weight per class"):
        cs.DiceLoss("multiclass", class_weights=[1.0, 2.0])(torch.randn(1, 3, 4, 4),
                                                            torch.randint(0, 3, (1, 4, 4)))
