"""Freed memory is kept in the process: a large tensor allocated again faults in no new pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from robustbench_iqa.allocator import retain_freed_memory
done = retain_freed_memory() if sys.argv[1] == "1" else False
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
x = torch.rand(8, 3, 192, 256)  # activations of 48 MiB each: above glibc's largest mmap threshold (32 MiB)
with torch.no_grad():
    for _ in range(5):  # the heap grows to the pass's peak
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        net(x)
print(int(done), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(retain: bool, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if retain else "0"], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})}).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reallocating_a_large_tensor_faults_no_new_pages() -> None:
    # Each pass allocates two 48 MiB activations (12,288 pages of 4 KiB each): with the C library's
    # defaults they are mapped afresh and every page faults in again on every pass.
    set_, retained = _faults(True)
    default_set, default = _faults(False)
    assert set_ and not default_set
    assert default >= 3 * 2 * 12_288
    assert retained <= default // 4  # measured: 0 to 24,576 against 221,202
    # The opt-out keeps the C library's defaults.
    opted_out, faults = _faults(True, {"ROBUSTBENCH_IQA_MALLOC": "system"})
    assert not opted_out and faults >= 3 * 2 * 12_288
