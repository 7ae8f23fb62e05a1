"""The main job: train a compact U-Net on a high-resolution procedural segmentation task with
cross-entropy, with softiou's Jaccard loss, and with both, and compare validation mIoU.

    python -m demo                       # defaults: a few minutes on 2 CPU cores; larger on a GPU
    torchrun --nproc_per_node=2 -m demo  # data-parallel (gloo on CPU, nccl on GPU)

Under torchrun every rank trains on its share of each batch; the Jaccard term uses
per_image=False with process_group=WORLD, so its statistics are summed over the ranks (a
differentiable all-reduce) and the loss is the IoU of the whole global batch. Seeds are fixed:
two runs give the same numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import softiou_cuda

from .data import CLASS_NAMES, NUM_CLASSES, make_batch
from .model import UNet

LOSSES = ("cross_entropy", "jaccard", "cross_entropy+jaccard")


def augment(images, labels, step):
    """The same flips and quarter turns for images and labels, chosen by the step."""
    g = torch.Generator().manual_seed(step)
    k = int(torch.randint(0, 4, (1,), generator=g))
    images, labels = torch.rot90(images, k, (-2, -1)), torch.rot90(labels, k, (-2, -1))
    if torch.rand(1, generator=g) < 0.5:
        images, labels = images.flip(-1), labels.flip(-1)
    return images.contiguous(), labels.contiguous()


def loss_fn(name, logits, target, group):
    if name == "cross_entropy":
        return F.cross_entropy(logits, target)
    # per_image=False: one IoU per class over the (global) batch; cross-entropy + Jaccard is one
    # fused call (ce_weight=1: F.cross_entropy's value, computed in softiou's passes; under a
    # process group it stays this rank's mean, as F.cross_entropy's does)
    return softiou_cuda.soft_iou_loss(logits, target, per_image=False, process_group=group,
                                      ce_weight=1.0 if name == "cross_entropy+jaccard" else 0.0)


def evaluate(model, images, labels, batch):
    """Hard IoU per class over the validation set, TP / (TP + FP + FN) (0 for a class absent
    from both the labels and the predictions): softiou's counts of each batch (one pass over the
    logits), summed by its epoch metric."""
    model.eval()
    metric = softiou_cuda.metrics.JaccardIndex(NUM_CLASSES, average="none")
    with torch.no_grad():
        for i in range(0, len(images), batch):
            metric.update(model(images[i:i + batch]), labels[i:i + batch])
    model.train()
    return metric.compute().double().cpu()


def train_one(name, args, train, val, device, rank, world, group, progress):
    torch.manual_seed(args.seed)
    model = UNet(classes=NUM_CLASSES, width=args.width).to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.15)
    images, labels = train
    history = {"step": [], "loss": [], "eval_step": [], "miou": []}
    per_rank = args.batch // world
    bar = progress(range(args.steps), desc=f"{name:22s}", disable=rank != 0, leave=True)
    for step in bar:
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        pick = torch.randperm(len(images), generator=g)[:args.batch]
        pick = pick[rank * per_rank:(rank + 1) * per_rank]  # this rank's share
        x, y = augment(images[pick], labels[pick], step)
        logits = model(x)
        loss = loss_fn(name, logits, y, group)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            miou = evaluate(model, *val, args.batch).mean().item()
            history["eval_step"].append(step + 1)
            history["miou"].append(miou)
            if rank == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", mIoU=f"{miou:.3f}")
    ious = evaluate(model, *val, args.batch)
    with torch.no_grad():
        preds = model(val[0][:args.show]).argmax(1).cpu()
    return ious, history, preds


def figures(results, val, out_dir, size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    os.makedirs(out_dir, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        h = r["history"]
        k = max(1, len(h["loss"]) // 40)
        smooth = torch.tensor(h["loss"]).unfold(0, k, k).mean(1) if len(h["loss"]) >= k else \
            torch.tensor(h["loss"])
        a.plot(torch.arange(len(smooth)) * k, smooth, label=name)
        b.plot(h["eval_step"], h["miou"], marker="o", label=name)
    a.set_title("training loss")
    a.set_xlabel("step")
    b.set_title("validation mIoU")
    b.set_xlabel("step")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)
    plt.close(fig)

    cmap = ListedColormap(["#1f3b73", "#ffd400", "#e0479e", "#3fbfbf"])
    imgs, labels = val[0][:len(next(iter(results.values()))["preds"])].cpu(), val[1].cpu()
    cols = 2 + len(results)
    fig, axes = plt.subplots(len(imgs), cols, figsize=(2.6 * cols, 2.6 * len(imgs)))
    axes = axes.reshape(len(imgs), cols)
    lo, hi = imgs.amin(), imgs.amax()
    for i in range(len(imgs)):
        axes[i, 0].imshow(((imgs[i] - lo) / (hi - lo)).permute(1, 2, 0).numpy())
        axes[i, 1].imshow(labels[i].numpy(), cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        for j, r in enumerate(results.values()):
            axes[i, 2 + j].imshow(r["preds"][i].numpy(), cmap=cmap, vmin=0, vmax=3,
                                  interpolation="nearest")
    for j, title in enumerate(["input", "ground truth"] + list(results)):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{size}x{size}: " + ", ".join(f"{c}={n}" for c, n in
                                                enumerate(CLASS_NAMES)), fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "predictions.png"), dpi=100)
    plt.close(fig)


def table(results):
    head = f"{'loss':24s}" + "".join(f"{n[:14]:>16s}" for n in CLASS_NAMES) + f"{'mIoU':>9s}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:24s}" + "".join(f"{v:16.3f}" for v in r["iou"]) +
                     f"{sum(r['iou']) / len(r['iou']):9.3f}")
    return "\n".join(lines)


def main(argv=None):
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024 if gpu else 256, help="image side")
    ap.add_argument("--steps", type=int, default=600 if gpu else 100)
    ap.add_argument("--batch", type=int, default=8 if gpu else 4, help="global batch")
    ap.add_argument("--train-images", type=int, default=64 if gpu else 40)
    ap.add_argument("--val-images", type=int, default=16 if gpu else 8)
    ap.add_argument("--width", type=int, default=16, help="U-Net base channels")
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--show", type=int, default=3, help="validation images in the figure")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="demo/results")
    ap.add_argument("--no-1d", action="store_true", help="skip the 1-D peak-detection variant")
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU threads (the figures depend on it: PyTorch's CPU convolutions add "
                         "their partial sums per thread)")
    args = ap.parse_args(argv)
    if not gpu:
        torch.set_num_threads(args.threads)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, group = 0, None
    if world > 1:
        dist.init_process_group("nccl" if gpu else "gloo")
        rank = dist.get_rank()
        group = dist.group.WORLD
        if args.batch % world:
            raise SystemExit(f"--batch {args.batch} must be a multiple of the {world} ranks")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu")
    if gpu:
        torch.cuda.set_device(device)
    try:
        from tqdm import tqdm as progress
    except ImportError:  # the progress bar is optional
        def progress(it, **_):
            return it
    torch.manual_seed(args.seed)
    t0 = time.time()
    if rank == 0:
        print(f"softiou demo: {args.size}x{args.size} images, {args.steps} steps of a global batch "
              f"of {args.batch}, {world} rank(s), {device}, softiou backend "
              f"{softiou_cuda.route.resolve('auto', device)}", flush=True)
    train = make_batch(range(args.train_images), args.size, device)
    val = make_batch(range(10_000, 10_000 + args.val_images), args.size, device)
    freq = torch.bincount(train[1].flatten().cpu(), minlength=NUM_CLASSES).double() \
        / train[1].numel()
    if rank == 0:
        print("class frequencies: " + ", ".join(f"{n} {f:.1%}" for n, f in
                                                zip(CLASS_NAMES, freq.tolist())), flush=True)
    results = {}
    for name in args.losses.split(","):
        ious, history, preds = train_one(name, args, train, val, device, rank, world, group,
                                         progress)
        results[name] = {"iou": ious.tolist(), "miou": ious.mean().item(), "history": history,
                         "preds": preds}
    if rank == 0:
        print("\nvalidation IoU (hard, from softiou's counts: softiou_cuda.metrics):")
        print(table(results))
        figures(results, val, args.out, args.size)
        summary = {k: {"iou": v["iou"], "miou": v["miou"], "history": v["history"]}
                   for k, v in results.items()}
        summary["config"] = dict(vars(args), world=world, device=str(device),
                                 seconds=round(time.time() - t0, 1),
                                 class_frequencies=freq.tolist())
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(f"\nwrote {args.out}/results.json, curves.png, predictions.png "
              f"({time.time() - t0:.0f} s)")
    if world > 1:
        # the DistributedDataParallel models (their reducers hold the process group) are gone
        # before the group is: destroying it under a live one can hang a rank at exit
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    elif not args.no_1d:
        from .signal1d import main as main_1d
        main_1d(["--out", args.out, "--threads", str(args.threads)])
    return results
