"""Test-session settings: one torch thread per test process.

On a shared 2-core machine more threads oversubscribe the cores (4x slower was
measured); results are also bit-identical only at a fixed thread count.
"""

import torch

torch.set_num_threads(1)
