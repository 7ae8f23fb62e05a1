"""The benchmark's cases: shapes, dtypes and the inputs they stand for."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    group: str  # per-call | bar | ce | counts | resolution | classes | dtype | layout | volume
    #             | signal
    N: int
    C: int
    spatial: tuple
    dtype: str = "float32"
    mode: str = "multiclass"
    threads: int = 0     # CPU threads for this case (0: torch's default)
    # "iou"; "ce+iou": cross-entropy plus the IoU loss (SPEC section 9); "iou+counts": the IoU
    # loss and the hard counts of a validation metric (SPEC section 11)
    loss: str = "iou"
    # the target's dtype: a class map of int64, int32 or uint8 (multiclass), or a binary mask of
    # int64 or bool (such as y > 0)
    target: str = "int64"
    layout: str = "contiguous"  # the input's memory format: contiguous, or channels_last (4-D)

    @property
    def torch_dtype(self):
        return getattr(torch, self.dtype)

    @property
    def pixels(self) -> int:
        n = 1
        for s in self.spatial:
            n *= s
        return n

    @property
    def resolution(self) -> str:
        return "x".join(map(str, self.spatial))

    def input_bytes(self) -> int:
        return self.N * self.C * self.pixels * self.torch_dtype.itemsize

    def target_bytes(self) -> int:
        per = self.C if self.mode != "multiclass" else 1
        return self.N * per * self.pixels * getattr(torch, self.target).itemsize

    def min_bytes(self, direction: str) -> int:
        """Fewest bytes a direction must move: each input read once, each output written once
        (forward+backward reads input and target twice and writes the gradient once)."""
        x, t = self.input_bytes(), self.target_bytes()
        return {"forward": x + t, "backward": x + t + x, "forward+backward": 2 * (x + t) + x}[direction]

    def make(self, device, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        shape = (self.N, self.C, *self.spatial)
        x = (torch.randn(shape, generator=g) * 2).to(device=device, dtype=self.torch_dtype)
        if self.layout == "channels_last":  # as a channels_last network's logits arrive
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mode == "multiclass":
            t = torch.randint(0, self.C, (self.N, *self.spatial), generator=g).to(
                getattr(torch, self.target))
        else:
            t = (torch.rand(shape, generator=g) < 0.3).to(getattr(torch, self.target))
        return x.requires_grad_(), t.to(device)


# The bar cases: the performance targets (bench/README.md) are stated on these
CPU_BAR = Case("cpu-bar", "bar", 4, 19, (512, 1024))
GPU_BAR = Case("gpu-bar", "bar", 8, 19, (1024, 2048))
GPU_BAR_BF16 = Case("gpu-bar-bf16", "bar", 8, 19, (1024, 2048), "bfloat16")
# the class map in 1 and 4 bytes: at bfloat16 an int64 map is a third of the forward's bytes
GPU_BAR_U8 = Case("gpu-bar-u8", "bar", 8, 19, (1024, 2048), target="uint8")
GPU_BAR_BF16_U8 = Case("gpu-bar-bf16-u8", "bar", 8, 19, (1024, 2048), "bfloat16", target="uint8")
GPU_BAR_I32 = Case("gpu-bar-i32", "bar", 8, 19, (1024, 2048), target="int32")
CPU_BAR_CE = Case("cpu-bar-ce", "ce", 4, 19, (512, 1024), loss="ce+iou")
GPU_BAR_CE = Case("gpu-bar-ce", "ce", 8, 19, (1024, 2048), loss="ce+iou")
CPU_BAR_COUNTS = Case("cpu-bar-counts", "counts", 4, 19, (512, 1024), loss="iou+counts")
GPU_BAR_COUNTS = Case("gpu-bar-counts", "counts", 8, 19, (1024, 2048), loss="iou+counts")


def per_call(device: str):
    """Small inputs, where the fixed cost of a call shows: one thread on the CPU. Their providers
    are timed in interleaved rounds, so that the machine's noise falls on all of them alike."""
    if device == "cpu":
        return [Case("call-2x4x16x16", "per-call", 2, 4, (16, 16), threads=1),
                Case("call-8x19x32x32", "per-call", 8, 19, (32, 32), threads=1)]
    return [Case("call-256x256", "per-call", 8, 19, (256, 256)),
            Case("call-signal-1d", "per-call", 256, 1, (16384,), mode="binary")]


def sweep(device: str, size: str = "full"):
    """The sweep: the per-call group, resolution (256x256 up to 1024x2048), classes (1, 19,
    150; C = 1 with an int64 and a bool mask), float32 and bfloat16, channels_last logits, a 3-D
    volume and a 1-D signal batch. The CPU sweep is smaller (2 cores)."""
    gpu = device == "cuda"
    if size == "quick":
        return [Case("quick-call", "per-call", 2, 4, (16, 16), threads=1),
                Case("quick", "resolution", 2, 5, (64, 96)),
                Case("quick-binary", "classes", 2, 1, (64, 96), mode="binary"),
                Case("quick-ce", "ce", 2, 5, (64, 96), loss="ce+iou"),
                Case("quick-counts", "counts", 2, 5, (64, 96), loss="iou+counts")]
    N = 8 if gpu else 4
    resolutions = [(256, 256), (512, 512), (512, 1024), (1024, 1024), (1024, 2048)]
    if not gpu:
        resolutions = resolutions[:3]
    cases = [Case(f"res-{h}x{w}", "resolution", N, 19, (h, w)) for h, w in resolutions]
    res = (512, 512) if gpu else (256, 512)
    cases += [
        Case(f"classes-1-{res[0]}x{res[1]}", "classes", N, 1, res, mode="binary"),
        Case(f"mask-bool-{res[0]}x{res[1]}", "classes", N, 1, res, mode="binary",
             target="bool"),
        Case(f"classes-150-{res[0]}x{res[1]}", "classes", N, 150, res),
        Case(f"bf16-{res[0]}x{res[1]}", "dtype", N, 19, res, "bfloat16"),
        Case(f"channels-last-{res[0]}x{res[1]}", "layout", N, 19, res, layout="channels_last"),
        Case("volume-128^3", "volume", 2, 14, (128, 128, 128) if gpu else (64, 128, 128)),
        Case("signal-1d", "signal", 256 if gpu else 64, 1, (16384,), mode="binary"),
    ]
    bars = [GPU_BAR, GPU_BAR_BF16, GPU_BAR_U8, GPU_BAR_BF16_U8, GPU_BAR_I32, GPU_BAR_CE,
            GPU_BAR_COUNTS] if gpu \
        else [CPU_BAR, CPU_BAR_CE, CPU_BAR_COUNTS]
    # the bar cases are also the largest resolution of the sweep on the GPU
    return per_call(device) + bars + [c for c in cases if not (gpu and c.spatial == (1024, 2048)
                                                               and c.dtype == "float32")]
