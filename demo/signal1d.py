"""The 1-D variant: peak detection in noisy signals, trained with the binary soft IoU loss on
[N, 1, L] inputs (and compared with binary cross-entropy).

    python -m demo.signal1d
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

import softiou_cuda

from .model import UNet


def make_signals(indices, length, device="cpu"):
    """Signals [B, 1, L] with a drifting baseline, noise and a few narrow peaks; targets [B, 1, L]
    mark the peaks (about 5% of the samples)."""
    xs, ys = [], []
    t = torch.arange(length, dtype=torch.float32)
    for index in indices:
        g = torch.Generator().manual_seed(7919 * int(index) + 3)
        base = torch.cumsum(torch.randn(length, generator=g), 0) * 0.02
        sig = base + 0.35 * torch.randn(length, generator=g)
        mask = torch.zeros(length)
        for _ in range(int(torch.randint(2, 7, (1,), generator=g))):
            c = float(torch.rand(1, generator=g)) * length
            w = float(torch.empty(1).uniform_(3, 10, generator=g))
            h = float(torch.empty(1).uniform_(0.8, 2.0, generator=g))
            sig = sig + h * torch.exp(-0.5 * ((t - c) / w) ** 2)
            mask = torch.maximum(mask, (abs(t - c) < 1.2 * w).float())
        xs.append(sig)
        ys.append(mask)
    return torch.stack(xs)[:, None].to(device), torch.stack(ys)[:, None].to(device)


def iou(pred, target):
    inter = (pred & target).sum().item()
    union = (pred | target).sum().item()
    return inter / max(union, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m demo.signal1d", description=__doc__)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="demo/results")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the figures depend on it)")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    train = make_signals(range(256), args.length, device)
    val = make_signals(range(10_000, 10_064), args.length, device)
    print(f"\n1-D peak detection: signals of {args.length} samples, peaks are "
          f"{train[1].mean().item():.1%} of them")
    results = {}
    for name in ("bce", "jaccard", "bce+jaccard"):
        torch.manual_seed(0)
        model = UNet(in_channels=1, classes=1, width=16, depth=3, dims=1).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(args.steps):
            g = torch.Generator().manual_seed(step)
            pick = torch.randperm(len(train[0]), generator=g)[:args.batch]
            x, y = train[0][pick], train[1][pick]
            logits = model(x)
            if name == "bce":
                loss = F.binary_cross_entropy_with_logits(logits, y)
            else:  # the Jaccard loss, with the binary cross-entropy fused in for "bce+jaccard"
                loss = softiou_cuda.soft_iou_loss(logits, y, mode="binary", per_image=False,
                                                  ce_weight=1.0 if "bce" in name else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(val[0]) > 0
        results[name] = iou(pred, val[1].bool())
        print(f"  {name:12s} validation IoU of the peaks: {results[name]:.3f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "signal1d.json"), "w") as f:
        json.dump(dict(results, length=args.length, steps=args.steps), f, indent=1)
    return results


if __name__ == "__main__":
    main()
