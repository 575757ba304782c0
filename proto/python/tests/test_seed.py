"""The seed example, through examples/seed.py and through the helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import berth_client
from berth_client import pb

from conftest import Agent, image, unique

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "seed.py"

SEED_COMMAND = "/bin/sh -c \"echo 'hello world' > $AZ_BATCH_TASK_WORKING_DIR/output.txt\""


def test_seed_example_prints_the_file_the_task_wrote(agent: Agent) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), agent.addr, image("busybox")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"


def test_seed_example_takes_address_and_image_from_the_environment(agent: Agent) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, BERTH_ADDR=agent.addr, BERTH_IMAGE=image("busybox")),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"


def test_seed_example_fails_without_an_agent(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), f"unix://{tmp_path}/none.sock", "busybox"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "UNAVAILABLE" in out.stderr


def test_seed_through_the_helpers(client: berth_client.Client) -> None:
    task = unique("seed")
    accepted = client.run_task("py", task, SEED_COMMAND, image=image("busybox"), run_options="--rm --workdir /")
    assert accepted.state == pb.ACTIVE
    done = client.wait("py", task, timeout=90)
    assert done.state == pb.COMPLETED
    assert done.result == pb.SUCCESS, done.failure_info
    assert done.exit_code == 0
    assert client.read_file("py", task, "wd/output.txt") == b"hello world\n"
    # From an offset, and at most a length.
    assert client.read_file("py", task, "wd/output.txt", 6) == b"world\n"
    assert client.read_file("py", task, "wd/output.txt", 0, length=5) == b"hello"


def test_read_file_follows_a_growing_file_until_the_task_completes(client: berth_client.Client) -> None:
    task = unique("follow")
    client.run_task(
        "py", task, "/bin/sh -c 'for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done'", image=image("busybox")
    )
    chunks = list(client.read_file("py", task, "stdout.txt", follow=True, poll=0.1))
    assert b"".join(chunks) == b"".join(b"line %d\n" % i for i in range(1, 6))
    assert len(chunks) > 1, "followed in one read: the file did not grow while it was followed"
    assert client.get_task("py", task).state == pb.COMPLETED
    # Following from an offset of a completed task returns the rest and ends.
    assert b"".join(client.read_file("py", task, "stdout.txt", 7, follow=True)) == b"".join(
        b"line %d\n" % i for i in range(2, 6)
    )


def test_read_file_follow_waits_for_a_task_still_waiting_for_a_slot(client: berth_client.Client) -> None:
    # A task that takes every slot keeps the next one ACTIVE (no directory yet).
    blocker, task = unique("blocker"), unique("queued")
    slots = client.node().task_slots_total
    client.run_task("py", blocker, "/bin/sleep 2", image=image("busybox"), required_slots=slots)
    client.run_task("py", task, "/bin/sh -c 'echo queued'", image=image("busybox"))
    assert client.get_task("py", task).state == pb.ACTIVE
    assert b"".join(client.read_file("py", task, "stdout.txt", follow=True, poll=0.1)) == b"queued\n"
    client.wait("py", blocker, timeout=60)


def test_pull_reports_progress_and_done(client: berth_client.Client) -> None:
    seen: list[pb.PullProgress] = []
    final = client.pull(image("layers"), progress=seen.append)
    assert final.done
    assert seen and seen[-1] == final
    assert final.bytes_total > 0 and final.bytes_done == final.bytes_total
    assert final.reference.endswith("layers:latest")


def test_node_and_list(client: berth_client.Client, agent: Agent) -> None:
    node = client.node()
    assert node.node_id == agent.node_id
    assert node.pool_id == "test-pool"
    assert node.containerd_reachable
    task = unique("list")
    client.run_task("py-list", task, "/bin/true", image=image("busybox"))
    client.wait("py-list", task, timeout=90)
    assert [t.task_id for t in client.list_tasks("py-list")] == [task]
    client.delete("py-list", task)
    assert client.list_tasks("py-list") == []


def test_list_tasks_follows_the_pages(client: berth_client.Client) -> None:
    tasks = [unique(f"page{i}") for i in range(5)]
    for t in tasks:
        client.run_task("py-pages", t, "/bin/true", image=image("busybox"))
    # Two per page: three pages, followed to the end, in acceptance order.
    assert [t.task_id for t in client.list_tasks("py-pages", page_size=2)] == tasks


def test_terminate_a_running_task(client: berth_client.Client) -> None:
    task = unique("term")
    client.run_task("py", task, "/bin/sleep 60", image=image("busybox"))
    _wait_running(client, "py", task)
    client.terminate("py", task, grace=0.5)
    done = client.wait("py", task, timeout=30)
    assert done.failure_info.code == "TaskTerminated"


def _wait_running(client: berth_client.Client, job: str, task: str) -> None:
    import time

    deadline = time.monotonic() + 60
    while client.get_task(job, task).state != pb.RUNNING:
        assert time.monotonic() < deadline, f"{job}/{task} not RUNNING"
        time.sleep(0.05)


def test_retries_and_host_mounts_through_the_helpers(client: berth_client.Client) -> None:
    task = unique("retry")
    count = "$AZ_BATCH_TASK_WORKING_DIR/n"
    client.run_task(
        "py",
        task,
        f"/bin/sh -c 'echo x >> {count}; [ $(wc -l < {count}) -ge 2 ]'",
        image=image("busybox"),
        max_task_retry_count=3,
    )
    done = client.wait("py", task, timeout=90)
    assert (done.exit_code, done.retry_count) == (0, 1), done
    assert done.previous_attempt.exit_code == 1
    assert done.spec.constraints.max_task_retry_count == 3

    task = unique("mounts")
    client.run_task(
        "py",
        task,
        "/bin/sh -c 'test -n \"$AZ_BATCH_NODE_SHARED_DIR\" || echo no-shared; touch $AZ_BATCH_TASK_DIR/x 2>&1'",
        image=image("busybox"),
        host_mounts=["Task:ro"],
    )
    done = client.wait("py", task, timeout=90)
    out = client.read_file("py", task, "stdout.txt").decode()
    assert "no-shared" in out and "Read-only file system" in out, out
    assert done.spec.container.host_mounts_set
    try:
        client.run_task("py", unique("bad"), "/bin/true", image=image("busybox"), host_mounts=["Everything"])
    except ValueError as e:
        assert "Everything" in str(e)
    else:
        raise AssertionError("an unknown source was accepted")
