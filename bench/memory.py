"""Peak resident memory of this process over a region of code (Linux).

``getrusage().ru_maxrss`` is no use here: a child inherits its parent's high-water mark across
fork and exec, so a benchmark process started by a large parent reads the parent's size.
``/proc/self/status`` VmHWM belongs to this process's own address space; writing 5 to
``/proc/self/clear_refs`` resets it to the current size, so the peak of a region is measured
from its start.
"""

import os


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def supported() -> bool:
    return os.path.exists("/proc/self/status")


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.extra`` is the peak resident bytes above the start."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # older kernels: VmHWM then also holds earlier peaks of this process
        self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        self.peak = _status_kib("VmHWM") * 1024
        self.extra = max(0, self.peak - self.start)
        return False
