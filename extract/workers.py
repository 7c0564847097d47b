"""Decode workers that survive their own crashes.

A native decoder can kill its process outright (a segfault in decord or FFmpeg on a malformed
file), which no ``try`` catches. ``torch.utils.data.DataLoader`` then raises for the whole run and
cannot say which item did it. :class:`SupervisedMap` instead gives each worker process its own
pair of pipes and sends results synchronously, so when a worker dies everything it returned has
arrived, and the item it died on is the oldest one it still held: that item alone becomes
``crashed(index, reason)``, a fresh worker takes over the rest, and every other item is computed
as usual. An exception raised by an item is reported the same way instead of ending the run.

Results come back in index order and are pickled through the pipe: plain numpy arrays, not
shared-memory tensors, whose hand-over needs the sending process alive.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Generic, Protocol, TypeVar

import torch
import torch.multiprocessing as torch_mp

log = logging.getLogger(__name__)

T = TypeVar("T", covariant=True)
R = TypeVar("R")
PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal a process receives when its parent dies."""


class MapStyle(Protocol[T]):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> T: ...


@dataclass(frozen=True)
class _Raised:
    """What a worker sends instead of a result when the item raised."""

    reason: str


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when its supervisor dies (a kill -9 leaves no orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans still end at their next send or recv
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def _work(dataset: MapStyle, tasks: Connection, results: Connection, parent: int,
          siblings: list[Connection]) -> None:
    _die_with_parent(parent)
    for conn in siblings:  # the supervisor's ends of other workers' pipes, inherited by fork
        conn.close()
    torch.set_num_threads(1)  # decoding is the work here; keep torch off the other cores
    while True:
        try:
            index = tasks.recv()
        except EOFError:  # the supervisor is gone
            return
        if index is None:
            return
        try:
            item = dataset[index]
        except Exception as err:  # noqa: BLE001 - one item's failure, reported to the supervisor
            log.debug("item %d raised:\n%s", index, traceback.format_exc())
            item = _Raised(f"decode worker raised {type(err).__name__}: {err}")
        results.send((index, item))  # returns once the supervisor has the whole result


@dataclass
class _Worker:
    process: BaseProcess
    tasks: Connection
    results: Connection
    held: deque[int] = field(default_factory=deque)
    """Indices sent to this worker and not yet returned, oldest (the one in progress) first."""


def exit_reason(exitcode: int | None) -> str:
    """``killed by SIGSEGV`` for a negative exit code, ``exited with code N`` otherwise."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class SupervisedMap(Generic[R]):
    """``dataset[0], dataset[1], ...`` computed by ``num_workers`` processes, yielded in order.

    The workers start in the constructor (fork them before opening files they should not
    inherit, such as a locked HDF5 cache) and stop in :meth:`close` or at the end of iteration.

    Args:
        dataset: Items to compute; must be picklable when the start method is not ``fork``.
        num_workers: Worker processes (>= 1).
        prefetch: Items queued on each worker (>= 1), the one in progress included; a worker
            holds at most one finished item until the supervisor reads it.
        crashed: Builds the result of an item whose worker died or raised, from the index and a
            reason such as ``"decode worker killed by SIGSEGV"``.
        context: multiprocessing context (default: torch's default start method).
    """

    def __init__(
        self,
        dataset: MapStyle[R],
        *,
        num_workers: int,
        prefetch: int,
        crashed: Callable[[int, str], R],
        context: BaseContext | None = None,
    ) -> None:
        if num_workers < 1 or prefetch < 1:
            raise ValueError(f"num_workers and prefetch must be >= 1, got {num_workers} and {prefetch}")
        self.dataset = dataset
        self.prefetch = prefetch
        self.crashed = crashed
        self._ctx = context or torch_mp.get_context()
        self._done: dict[int, R] = {}
        self._submitted = 0
        self._workers: list[_Worker] = []
        try:
            for _ in range(num_workers):
                self._workers.append(self._start(deque()))
            self._refill()
        except BaseException:
            self.close()
            raise

    def _start(self, held: deque[int]) -> _Worker:
        task_out, task_in = self._ctx.Pipe(duplex=False)
        result_out, result_in = self._ctx.Pipe(duplex=False)
        siblings = [conn for w in self._workers for conn in (w.tasks, w.results) if not conn.closed]
        process = self._ctx.Process(
            target=_work, args=(self.dataset, task_out, result_in, os.getpid(), siblings), daemon=True
        )
        process.start()
        # Only the worker keeps these ends, so its death closes them.
        task_out.close()
        result_in.close()
        worker = _Worker(process, task_in, result_out)
        for index in held:
            worker.held.append(index)
            worker.tasks.send(index)
        return worker

    def _refill(self) -> None:
        for worker in self._workers:
            while len(worker.held) < self.prefetch and self._submitted < len(self.dataset):
                worker.held.append(self._submitted)
                self._submitted += 1
                try:
                    worker.tasks.send(worker.held[-1])
                except OSError:  # it has died; its replacement is sent everything it held
                    break

    def _drain(self, slot: int) -> None:
        """Read everything worker ``slot`` has sent; replace it if it has died."""
        worker = self._workers[slot]
        try:
            while worker.results.poll():
                index, item = worker.results.recv()
                assert worker.held and worker.held[0] == index, f"worker {slot}: {index} out of order"
                worker.held.popleft()
                self._done[index] = self.crashed(index, item.reason) if isinstance(item, _Raised) else item
        except (EOFError, OSError):
            pass  # its end of the pipe closed: it has died, handled below
        if worker.process.is_alive():
            return
        worker.process.join()
        reason = f"decode worker {exit_reason(worker.process.exitcode)}"
        if worker.held:
            index = worker.held.popleft()
            log.warning("item %d: %s; starting a new worker", index, reason)
            self._done[index] = self.crashed(index, reason)
        else:
            log.warning("%s while idle; starting a new worker", reason)
        worker.tasks.close()
        worker.results.close()
        self._workers[slot] = self._start(worker.held)

    def __iter__(self) -> Iterator[R]:
        try:
            for index in range(len(self.dataset)):
                while index not in self._done:
                    waiting = {w.results: s for s, w in enumerate(self._workers)}
                    waiting |= {w.process.sentinel: s for s, w in enumerate(self._workers)}
                    for slot in sorted({waiting[ready] for ready in connection.wait(list(waiting))}):
                        self._drain(slot)
                yield self._done.pop(index)
                self._refill()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (at once when they still hold items); safe to call twice."""
        for worker in self._workers:
            if worker.held:  # closed early: its queued items are not wanted
                worker.process.kill()
            else:
                try:
                    worker.tasks.send(None)
                except OSError:
                    pass  # already gone
        for worker in self._workers:
            worker.process.join()
            worker.tasks.close()
            worker.results.close()
        self._workers = []
