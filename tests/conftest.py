"""Shared test setup, kept small.

One intra-op thread: every tensor in these tests is tiny, and on a 2-core machine shared with
other jobs, OpenMP threads that spin-wait for a busy core make each op 10-100x slower.
"""

import torch

torch.set_num_threads(1)
