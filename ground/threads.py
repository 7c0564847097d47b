"""The one torch thread policy of every `python -m ground` command.

Each command runs torch with one intra-op thread unless `$GROUNDCACHE_TORCH_THREADS` gives
another count; `ground/__main__.py` applies it once, before the command starts. Measured on the
project's shared 2-core machine (docs/benchmarks.md, "Threads"): with other processes competing
for the cores, training `span` ran twice as fast on one thread as on two; two threads win only
on an otherwise idle machine. GPU training gathers its batches on the GPU, so the CPU thread
count hardly matters there; set the variable for CPU work on a machine with idle cores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

ENV_VAR = "GROUNDCACHE_TORCH_THREADS"
DEFAULT_THREADS = 1


class ThreadSettingError(ValueError):
    """`$GROUNDCACHE_TORCH_THREADS` is not a positive whole number; the message quotes it."""


def torch_threads(environ: Mapping[str, str] = os.environ) -> int:
    """The intra-op thread count the policy gives: `$GROUNDCACHE_TORCH_THREADS`, else 1.

    Raises:
        ThreadSettingError: the variable is set to anything but a whole number >= 1.
    """
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ThreadSettingError(f"{ENV_VAR}={value!r}: expected a whole number of threads >= 1")
    return int(value)


def apply_thread_policy(environ: Mapping[str, str] = os.environ) -> int:
    """Set torch's intra-op threads for this process by the policy; returns the count set.

    Raises:
        ThreadSettingError: as `torch_threads`.
    """
    threads = torch_threads(environ)
    torch.set_num_threads(threads)
    return threads
