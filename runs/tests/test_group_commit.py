"""GroupCommit (runs/services/completions.py) with real threads: a lone item is written at once;
items submitted under a key while a batch of that key is being written wait, and are then
written together in the next batch; keys do not wait on each other; nobody returns before the
batch holding its item is written; an error of `write` reaches every submitter of its batch.

No database and no mocks: `write` is a function of the test that records its batches and, when
told to, blocks on an event the test sets. Whatever the test waits for, it polls with a
deadline; nothing sleeps a fixed time in place of a result."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import pytest

from runs.services.completions import GroupCommit, Waiting
from sparkops.testing.engine import wait_until

TIMEOUT = 10.0


def poll(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """`predicate()` once it is truthy; fails after `timeout` seconds."""
    return wait_until(predicate, timeout=timeout, interval=0.002, what=what)


class Writer:
    """The `write` of a GroupCommit under test. Each batch's items are recorded in `batches`
    (in the order written); the outcome of an item is `outcome(item)`. While `hold` names a
    key's first item, the write of that batch waits for `release` (after telling `entered`).
    An item in `fail` makes its batch raise."""

    def __init__(self, outcome: Callable[[Any], bool] = lambda item: True) -> None:
        self.lock = threading.Lock()
        self.outcome = outcome
        self.batches: list[list[Any]] = []
        self.log: list[tuple[str, Any]] = []  # ("start"/"end", items) and ("returned", item)
        self.hold: set[Any] = set()
        self.entered: dict[Any, threading.Event] = {}
        self.release: dict[Any, threading.Event] = {}
        self.fail: dict[Any, BaseException] = {}

    def block(self, item: Any) -> tuple[threading.Event, threading.Event]:
        """Make the batch whose first item is `item` wait: (entered, release)."""
        self.hold.add(item)
        self.entered[item] = threading.Event()
        self.release[item] = threading.Event()
        return self.entered[item], self.release[item]

    def __call__(self, batch: list[Waiting[Any]]) -> None:
        items = [waiting.item for waiting in batch]
        with self.lock:
            self.batches.append(items)
            self.log.append(("start", tuple(items)))
        first = items[0]
        if first in self.hold:
            self.entered[first].set()
            assert self.release[first].wait(TIMEOUT), "the test never released the write"
        try:
            for item in items:
                if item in self.fail:
                    raise self.fail[item]
            for waiting in batch:
                waiting.outcome = self.outcome(waiting.item)
        finally:
            with self.lock:
                self.log.append(("end", tuple(items)))

    def returned(self, item: Any) -> None:
        with self.lock:
            self.log.append(("returned", item))


class Submitters:
    """Threads that each submit one item and record what `submit` returned or raised."""

    def __init__(self, commit: GroupCommit[Any], writer: Writer) -> None:
        self.commit = commit
        self.writer = writer
        self.threads: list[threading.Thread] = []
        self.results: dict[Any, bool] = {}
        self.errors: dict[Any, BaseException] = {}
        self.lock = threading.Lock()

    def submit(self, key: Hashable, item: Any) -> threading.Thread:
        def run() -> None:
            try:
                outcome = self.commit.submit(key, item)
            except BaseException as exc:  # recorded for the test to assert on
                with self.lock:
                    self.errors[item] = exc
            else:
                with self.lock:
                    self.results[item] = outcome
            finally:
                self.writer.returned(item)

        thread = threading.Thread(target=run, name=f"submit-{key}-{item}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))
        alive = [thread.name for thread in self.threads if thread.is_alive()]
        assert not alive, f"submitters still waiting: {alive}"

    def done(self, item: Any) -> bool:
        with self.lock:
            return item in self.results or item in self.errors


def queued(commit: GroupCommit[Any], key: Hashable) -> list[Any]:
    """The items waiting under `key` while a batch of that key is written."""
    with commit._lock:
        return [waiting.item for waiting in commit._waiting.get(key, [])]


@pytest.fixture
def released() -> Iterator[list[threading.Event]]:
    """Events a test blocks writes on: all set at the end, so no thread outlives a failure."""
    events: list[threading.Event] = []
    yield events
    for event in events:
        event.set()


def test_a_lone_submit_is_written_at_once_as_a_batch_of_one() -> None:
    writer = Writer(outcome=lambda item: item == "yes")
    commit: GroupCommit[str] = GroupCommit(writer)
    assert commit.submit("k", "yes") is True
    assert commit.submit("k", "no") is False
    assert writer.batches == [["yes"], ["no"]]
    assert queued(commit, "k") == []
    assert commit._waiting == {}  # no write in progress is left behind


def test_items_submitted_during_a_write_are_written_together_next(
    released: list[threading.Event],
) -> None:
    writer = Writer(outcome=lambda item: item % 2 == 0)
    commit: GroupCommit[int] = GroupCommit(writer)
    submitters = Submitters(commit, writer)
    entered, release = writer.block(0)
    released.append(release)

    submitters.submit("K", 0)
    poll(entered.is_set, "the first write to start")
    others = list(range(1, 8))
    for item in others:
        submitters.submit("K", item)
    poll(lambda: sorted(queued(commit, "K")) == others, "the other items to queue")
    # They wait: none was written, none returned, while the first write is in progress.
    assert writer.batches == [[0]]
    assert not any(submitters.done(item) for item in others)

    release.set()
    submitters.join()
    assert writer.batches[0] == [0]
    assert len(writer.batches) == 2, writer.batches
    assert sorted(writer.batches[1]) == others  # exactly those, as one batch
    assert submitters.errors == {}
    assert submitters.results == {item: item % 2 == 0 for item in [0, *others]}
    assert commit._waiting == {}


def test_a_key_does_not_wait_for_another_keys_write(released: list[threading.Event]) -> None:
    writer = Writer()
    commit: GroupCommit[str] = GroupCommit(writer)
    submitters = Submitters(commit, writer)
    entered, release = writer.block("a1")
    released.append(release)

    submitters.submit("A", "a1")
    poll(entered.is_set, "the write of key A to start")
    # In this thread: returns while A's write is still blocked.
    assert commit.submit("B", "b1") is True
    assert not release.is_set()
    assert writer.batches == [["a1"], ["b1"]]
    assert not submitters.done("a1")

    submitters.submit("A", "a2")
    poll(lambda: queued(commit, "A") == ["a2"], "a2 to queue behind A's write")
    assert commit.submit("B", "b2") is True  # B's own write is long over
    assert queued(commit, "B") == []

    release.set()
    submitters.join()
    assert writer.batches == [["a1"], ["b1"], ["b2"], ["a2"]]
    assert submitters.results == {"a1": True, "a2": True}


def test_no_submitter_returns_before_its_batch_is_written(
    released: list[threading.Event],
) -> None:
    writer = Writer()
    commit: GroupCommit[str] = GroupCommit(writer)
    submitters = Submitters(commit, writer)
    entered, release = writer.block("first")
    released.append(release)
    # The second batch is held too, so its items wait through two writes.
    entered2, release2 = writer.block("w0")
    released.append(release2)

    submitters.submit("K", "first")
    poll(entered.is_set, "the first write to start")
    second = [f"w{i}" for i in range(5)]
    submitters.submit("K", "w0")
    poll(lambda: queued(commit, "K") == ["w0"], "w0 to queue first")
    for item in second[1:]:
        submitters.submit("K", item)
    poll(lambda: queued(commit, "K") == second, "the second batch to queue")

    release.set()
    poll(entered2.is_set, "the second write to start")
    # The first batch's submitter is back; the second batch's are not, their write held.
    poll(lambda: submitters.done("first"), "the first submitter to return")
    assert not any(submitters.done(item) for item in second)
    submitters.submit("K", "third")
    poll(lambda: queued(commit, "K") == ["third"], "a third batch to queue")

    release2.set()
    submitters.join()
    assert writer.batches == [["first"], second, ["third"]]
    log = writer.log
    for batch in writer.batches:
        end = log.index(("end", tuple(batch)))
        for item in batch:
            assert log.index(("returned", item)) > end, (item, log)
    # And a batch starts only after the previous one of its key ended.
    starts = [i for i, (kind, _) in enumerate(log) if kind == "start"]
    ends = [i for i, (kind, _) in enumerate(log) if kind == "end"]
    assert all(end < start for end, start in zip(ends, starts[1:], strict=False)), log
    assert submitters.results == dict.fromkeys(["first", *second, "third"], True)


def test_an_error_of_write_is_raised_by_its_whole_batch_and_the_next_batch_is_written(
    released: list[threading.Event],
) -> None:
    writer = Writer()
    commit: GroupCommit[str] = GroupCommit(writer)
    submitters = Submitters(commit, writer)
    entered, release = writer.block("lead")
    released.append(release)
    boom = RuntimeError("the write failed")
    entered_bad, release_bad = writer.block("bad0")
    released.append(release_bad)
    writer.fail["bad1"] = boom

    submitters.submit("K", "lead")
    poll(entered.is_set, "the first write to start")
    failing = ["bad0", "bad1", "bad2"]
    submitters.submit("K", "bad0")
    poll(lambda: queued(commit, "K") == ["bad0"], "bad0 to queue first")
    for item in failing[1:]:
        submitters.submit("K", item)
    poll(lambda: queued(commit, "K") == failing, "the failing batch to queue")

    release.set()
    poll(entered_bad.is_set, "the failing batch's write to start")
    after = ["ok0", "ok1"]
    for item in after:
        submitters.submit("K", item)
    poll(lambda: sorted(queued(commit, "K")) == after, "the next batch to queue")

    release_bad.set()
    submitters.join()
    assert writer.batches[:2] == [["lead"], failing]
    assert len(writer.batches) == 3
    assert sorted(writer.batches[2]) == after  # leadership was handed on after the error
    assert submitters.results == {"lead": True, "ok0": True, "ok1": True}
    assert set(submitters.errors) == set(failing)
    assert all(error is boom for error in submitters.errors.values())
    assert commit._waiting == {}

    # The key is usable afterwards: a lone submit is written at once.
    assert commit.submit("K", "later") is True
    assert writer.batches[-1] == ["later"]


def test_an_error_of_a_lone_write_is_raised_and_the_key_is_freed() -> None:
    writer = Writer()
    commit: GroupCommit[str] = GroupCommit(writer)
    writer.fail["x"] = ValueError("no")
    with pytest.raises(ValueError, match="no"):
        commit.submit("K", "x")
    assert commit._waiting == {}
    assert commit.submit("K", "y") is True
    assert writer.batches == [["x"], ["y"]]
