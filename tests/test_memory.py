"""release_freed_memory returns the heap's free pages to the OS (glibc), measured on this process's RSS."""

import platform

import pytest
import torch

from refusal_lab.core.memory import release_freed_memory


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_release_returns_freed_holes_to_the_os():
    torch.ones(8 << 18).mul_(2)  # one 8 MB block freed: glibc raises its mmap threshold, later ones come from the heap
    blocks = [torch.ones(8 << 18) for _ in range(48)]  # 48 × 8 MB, touched
    del blocks[::2]  # 24 holes of 8 MB between live blocks: free, yet resident (not at the heap's top)
    before = rss_mb()
    assert release_freed_memory()
    assert before - rss_mb() > 96  # most of the 192 MB of holes are given back
    assert all(float(b[0]) == 1.0 for b in blocks)  # the live blocks are untouched
