"""Group commit of step results: the results of one run's steps that end together are written
in one transaction.

A 500-node fan-out ends 500 steps within a second, and a thousand model calls that answer
together end a thousand: written one by one, each result is a transaction of its own that locks
the run row, appends its events, checks what is still in flight and commits, and every other
result of the run queues on that lock meanwhile. Here the first result of a run to arrive
writes at once (a batch of one); those that arrive while it writes wait, and the first of them
then writes them all in one transaction; and so on. Nothing waits on purpose, so a lone result
is written as before, and a result is never reported written before its transaction commits
(the task acknowledges its message after that).

Works across the threads of a worker and across its greenlets (gevent patches `threading`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Waiting(Generic[T]):
    """One result waiting to be written (`item`), and what writing it came to."""

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.batch: list[Waiting[T]] | None = None  # set when this one is to write a batch
        self.outcome: bool = False
        self.error: BaseException | None = None

    def result(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.outcome


class GroupCommit(Generic[T]):
    """`submit(key, item)` writes `item` with `write(batch)` in a batch of the items submitted
    under the same key at about the same time. `write` sets each one's `outcome` (or raises:
    every item of the batch then raises the error)."""

    def __init__(self, write: Callable[[list[Waiting[T]]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        # key -> items waiting while a batch of that key is written (present while one is)
        self._waiting: dict[Hashable, list[Waiting[T]]] = {}

    def submit(self, key: Hashable, item: T) -> bool:
        mine = Waiting(item)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                self._waiting[key] = []
                mine.batch = [mine]
            else:
                waiting.append(mine)
        if mine.batch is None:
            mine.done.wait()
            if mine.batch is None:  # written by another
                return mine.result()
        self._lead(key, mine.batch)
        return mine.result()

    def _lead(self, key: Hashable, batch: list[Waiting[T]]) -> None:
        try:
            self._write(batch)
        except BaseException as exc:  # each of the batch raises it (`result`)
            for waiting in batch:
                waiting.error = exc
        finally:
            with self._lock:
                following = self._waiting.pop(key)
                if following:
                    self._waiting[key] = []
                    following[0].batch = following
            for waiting in batch[1:]:
                waiting.done.set()
            if following:
                following[0].done.set()
