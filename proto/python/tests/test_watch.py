"""watch(): resumes after a reconnect with no event lost and none repeated."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, List, Optional, Tuple

import pytest

import berth_client
from berth_client import pb

from conftest import Agent, AgentFactory, image

Event = Tuple[int, str, str, int]  # sequence, job, task, state


def key(ev: pb.TaskEvent) -> Event:
    return (ev.sequence, ev.task.job_id, ev.task.task_id, ev.task.state)


class Watcher:
    """Consumes client.watch(from_sequence) in a thread, into a queue."""

    def __init__(self, client: berth_client.Client, from_sequence: int = 0) -> None:
        self.client = client
        self.events: "queue.Queue[pb.TaskEvent]" = queue.Queue()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(from_sequence,), daemon=True)
        self.thread.start()

    def _run(self, from_sequence: int) -> None:
        try:
            for ev in self.client.watch(from_sequence, reconnect_timeout=60):
                self.events.put(ev)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def until(self, done: Callable[[pb.TaskEvent], bool], timeout: float = 60) -> List[pb.TaskEvent]:
        """The events up to and including the first for which done() holds."""
        got: List[pb.TaskEvent] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"watch: not there after {timeout} s; got {[key(e) for e in got]}"
            try:
                ev = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                assert self.error is None, f"watch failed: {self.error!r}"
                continue
            got.append(ev)
            if done(ev):
                return got

    def stop(self) -> None:
        self.client.close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "watch did not end when its client was closed"
        assert self.error is None, f"watch failed: {self.error!r}"


def completed(job: str, task: str) -> Callable[[pb.TaskEvent], bool]:
    return lambda ev: ev.task.job_id == job and ev.task.task_id == task and ev.task.state == pb.COMPLETED


def wait_state(client: berth_client.Client, job: str, task: str, state: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get_task(job, task).state != state:
        assert time.monotonic() < deadline, f"{job}/{task} not {pb.TaskState.Name(state)}"
        time.sleep(0.05)


def test_watch_replays_then_follows_and_from_sequence_skips(make_agent: AgentFactory) -> None:
    agent = make_agent().start()
    c = agent.client()
    c.run_task("w", "one", "/bin/true", image=image("busybox"))
    c.wait("w", "one", timeout=90)
    replay = Watcher(agent.client(), 0)
    first = replay.until(completed("w", "one"))
    assert [e.task.state for e in first] == [pb.ACTIVE, pb.PREPARING, pb.RUNNING, pb.COMPLETED]
    seqs = [e.sequence for e in first]
    assert seqs == sorted(set(seqs))
    # Live events follow the replay on the same stream.
    c.run_task("w", "two", "/bin/true", image=image("busybox"))
    live = replay.until(completed("w", "two"))
    assert live[0].sequence > seqs[-1]
    replay.stop()
    # From a sequence: only what came after it.
    later = Watcher(agent.client(), seqs[1])
    rest = later.until(completed("w", "two"))
    assert [key(e) for e in rest] == [key(e) for e in first[2:] + live]
    later.stop()


def test_watch_across_an_agent_restart_loses_and_repeats_nothing(
    make_agent: AgentFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="berth_client")
    agent: Agent = make_agent().start()
    c = agent.client()
    busybox = image("busybox")
    c.run_task("w", "before", "/bin/true", image=busybox)
    c.wait("w", "before", timeout=90)

    watcher = Watcher(agent.client(), 0)
    seen = watcher.until(completed("w", "before"))

    # A task that is running when the agent dies and ends while it is down.
    c.run_task("w", "across", "/bin/sleep 2", image=busybox)
    wait_state(c, "w", "across", pb.RUNNING)
    seen += watcher.until(lambda ev: ev.task.task_id == "across" and ev.task.state == pb.RUNNING)

    agent.kill()  # SIGKILL: no goodbye to the watch stream
    time.sleep(2.5)  # "across" exits meanwhile; the watcher keeps retrying
    agent.start()  # same config, same state dir

    c2 = agent.client()
    c2.run_task("w", "after", "/bin/true", image=busybox)
    c2.wait("w", "after", timeout=90)
    assert c2.get_task("w", "across").state == pb.COMPLETED
    newest = max(t.sequence for t in c2.list_tasks())

    seen += watcher.until(lambda ev: ev.sequence >= newest)
    watcher.stop()

    # The full replay from 0, after the restart, is the reference.
    full = Watcher(agent.client(), 0)
    reference = full.until(lambda ev: ev.sequence >= newest)
    full.stop()

    got = [key(e) for e in seen]
    want = [key(e) for e in reference]
    sequences = [k[0] for k in got]
    assert len(sequences) == len(set(sequences)), f"an event was seen twice: {got}"
    assert sequences == sorted(sequences), f"out of order: {got}"
    assert got == want, f"live watch across the restart differs from the replay:\n{got}\n{want}"
    # The stream did break and was resumed from the last sequence seen.
    resumes = [r.getMessage() for r in caplog.records if "resuming after sequence" in r.getMessage()]
    assert resumes, "the watch never reconnected: the agent was not restarted under it?"
    assert "UNAVAILABLE" in resumes[0]
    print("watch resumes:", resumes)
    # It did see what happened while the agent was down and after it came back.
    assert ("w", "across", pb.COMPLETED) in [k[1:] for k in got]
    assert ("w", "after", pb.COMPLETED) in [k[1:] for k in got]
