"""Decode workers: results in order, and a worker killed by a signal fails only its own item."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from extract.workers import SupervisedMap, exit_reason

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Items:
    """Item i is an array filled with i; the listed items kill their process or raise instead."""

    n: int
    deadly: frozenset[int] = frozenset()
    how: signal.Signals | None = signal.SIGSEGV

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        if index in self.deadly:
            if self.how is None:
                raise ValueError(f"bad item {index}")
            os.kill(os.getpid(), self.how)
        return np.full((300, 400), index)  # 960 kB: larger than a pipe's buffer


def crashed(index: int, reason: str) -> str:
    return f"{index}: {reason}"


@pytest.mark.parametrize("num_workers, prefetch", [(1, 1), (2, 2), (3, 1)])
def test_results_come_back_in_order(num_workers, prefetch):
    out = list(SupervisedMap(Items(9), num_workers=num_workers, prefetch=prefetch, crashed=crashed))
    assert [int(a[0, 0]) for a in out] == list(range(9))


@pytest.mark.parametrize("num_workers, prefetch", [(1, 1), (1, 3), (2, 2)])
def test_a_crash_fails_only_the_item_in_hand(num_workers, prefetch):
    items = Items(8, deadly=frozenset({2, 3, 6}))
    out = list(SupervisedMap(items, num_workers=num_workers, prefetch=prefetch, crashed=crashed))
    for i, result in enumerate(out):
        if i in items.deadly:
            assert result == f"{i}: decode worker killed by SIGSEGV"
        else:
            np.testing.assert_array_equal(result, np.full((300, 400), i))


def test_every_item_crashing_still_finishes():
    items = Items(3, deadly=frozenset({0, 1, 2}), how=signal.SIGKILL)
    out = list(SupervisedMap(items, num_workers=2, prefetch=2, crashed=crashed))
    assert out == [f"{i}: decode worker killed by SIGKILL" for i in range(3)]


def test_an_exception_fails_only_its_item():
    items = Items(4, deadly=frozenset({1}), how=None)
    out = list(SupervisedMap(items, num_workers=2, prefetch=2, crashed=crashed))
    assert out[1] == "1: decode worker raised ValueError: bad item 1"
    assert [int(out[i][0, 0]) for i in (0, 2, 3)] == [0, 2, 3]


def test_closing_early_stops_the_workers():
    pool = SupervisedMap(Items(50), num_workers=2, prefetch=2, crashed=crashed)
    assert int(next(iter(pool))[0, 0]) == 0
    pool.close()
    pool.close()  # twice is fine
    assert not multiprocessing.active_children()


def test_workers_start_before_iteration_and_die_with_their_supervisor(tmp_path):
    """A kill -9 of the supervisor leaves no orphan holding files it inherited."""
    script = tmp_path / "supervisor.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_workers import Items, crashed
        from extract.workers import SupervisedMap
        pool = SupervisedMap(Items(4), num_workers=2, prefetch=1, crashed=crashed)
        print(" ".join(str(w.process.pid) for w in pool._workers), flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_workers"):
        SupervisedMap(Items(1), num_workers=0, prefetch=1, crashed=crashed)


def test_exit_reason_names_the_signal():
    assert exit_reason(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert exit_reason(3) == "exited with code 3"
