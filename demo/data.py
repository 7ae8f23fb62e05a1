"""A procedural segmentation dataset that looks like the real problem: high resolution, thin
structures, heavy class imbalance, a few classes. Every image is generated from its index, so the
data are the same on every run, every device and every rank.

    class 0  background                     textured noise
    class 1  thin curvilinear structures    ~2-4 % of the pixels, 1-3 px wide, low contrast
             ("vessels", "roads", "cracks")
    class 2  blobs                          round objects of varied size
    class 3  large regions                  low-frequency fields with their own texture
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NUM_CLASSES = 4
CLASS_NAMES = ["background", "thin structures", "blobs", "regions"]


def _smooth_noise(g, n, size, cells, device):
    """Low-frequency noise in [0, 1]: a coarse random grid, bicubic upsampled."""
    coarse = torch.rand(n, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0] \
        .clamp(0, 1).to(device)


def _curves(g, size, count):
    """Polylines of random walks with momentum: [count, points, 2] in pixel units."""
    points = 24
    start = torch.rand(count, 2, generator=g) * size
    angle = torch.rand(count, generator=g) * 2 * math.pi
    turn = (torch.rand(count, points, generator=g) - 0.5) * 0.6
    angles = angle[:, None] + torch.cumsum(turn, dim=1)
    step = size / points * 1.2
    steps = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1) * step
    return torch.cat([start[:, None], start[:, None] + torch.cumsum(steps, dim=1)], dim=1)


def _distance_to_polylines(lines, size, device):
    """min distance of every pixel to the segments of the polylines: [size, size]."""
    ys, xs = torch.meshgrid(torch.arange(size, device=device, dtype=torch.float32),
                            torch.arange(size, device=device, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2)  # [P, 1, 2]
    a = lines[:, :-1].reshape(-1, 2).to(device)[None]  # [1, S, 2]
    b = lines[:, 1:].reshape(-1, 2).to(device)[None]
    best = torch.full((pix.shape[0],), float("inf"), device=device)
    for chunk in torch.split(torch.arange(a.shape[1], device=device), 32):
        ab = b[:, chunk] - a[:, chunk]
        t = ((pix - a[:, chunk]) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)
        proj = a[:, chunk] + t.clamp(0, 1)[..., None] * ab
        best = torch.minimum(best, (pix - proj).norm(dim=-1).min(dim=1).values)
    return best.reshape(size, size)


def make_batch(indices, size, device="cpu"):
    """Images [B, 3, size, size] and class maps [B, size, size] for the given sample indices."""
    images, labels = [], []
    for index in indices:
        g = torch.Generator().manual_seed(1_000_003 * int(index) + 17)
        regions = _smooth_noise(g, 1, size, 6, device)[0] > 0.62
        # blobs: a few discs of random radius
        blobs = torch.zeros(size, size, dtype=torch.bool, device=device)
        ys, xs = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device),
                                indexing="ij")
        for _ in range(int(torch.randint(3, 9, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = float(torch.empty(1).uniform_(0.025, 0.07, generator=g)) * size
            blobs |= (ys - cy) ** 2 + (xs - cx) ** 2 < r * r
        # thin structures: a few polylines, 1-3 px wide
        width = max(1.0, size / 256)
        dist = _distance_to_polylines(_curves(g, size, int(torch.randint(3, 6, (1,), generator=g))),
                                      size, device)
        thin = dist < width
        label = torch.zeros(size, size, dtype=torch.long, device=device)
        label[regions] = 3
        label[blobs] = 2
        label[thin] = 1

        texture = _smooth_noise(g, 3, size, size // 8, device)
        img = 0.35 * texture
        img[0] += 0.30 * regions * _smooth_noise(g, 1, size, size // 16, device)[0] + 0.1 * regions
        img[1] += 0.35 * blobs
        img[2] += 0.25 * blobs
        line_profile = torch.exp(-(dist / width) ** 2)  # thin, blurred, low-contrast lines
        img[2] += 0.45 * line_profile
        img[0] -= 0.25 * line_profile
        img += 0.12 * torch.randn(3, size, size, generator=g).to(device)
        images.append(img)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def class_frequencies(size, count=8):
    _, labels = make_batch(range(10_000, 10_000 + count), size)
    return torch.bincount(labels.flatten(), minlength=NUM_CLASSES).double() / labels.numel()
