"""Each mapped gRPC status raises its exception, all BerthErrors."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

import berth_client
from berth_client import pb

from conftest import image, unique


def test_invalid_argument_for_a_bad_task_id(client: berth_client.Client) -> None:
    with pytest.raises(berth_client.InvalidArgument) as e:
        client.run_task("py", "bad id!", "/bin/true", image=image("busybox"))
    assert isinstance(e.value, berth_client.BerthError)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad id!" in e.value.message or "task" in e.value.message.lower()


def test_already_exists_for_the_same_task_twice(client: berth_client.Client) -> None:
    task = unique("twice")
    client.run_task("py", task, "/bin/true", image=image("busybox"))
    with pytest.raises(berth_client.AlreadyExists) as e:
        client.run_task("py", task, "/bin/true", image=image("busybox"))
    assert isinstance(e.value, berth_client.BerthError)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    client.wait("py", task, timeout=90)


def test_not_found_for_an_unknown_task(client: berth_client.Client) -> None:
    with pytest.raises(berth_client.NotFound) as e:
        client.get_task("py", unique("nobody"))
    assert isinstance(e.value, berth_client.BerthError)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(berth_client.NotFound):
        client.read_file("py", unique("nobody"), "stdout.txt")


def test_failed_precondition_to_delete_a_running_task(client: berth_client.Client) -> None:
    task = unique("running")
    client.run_task("py", task, "/bin/sleep 60", image=image("busybox"))
    deadline = time.monotonic() + 60
    while client.get_task("py", task).state != pb.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        with pytest.raises(berth_client.FailedPrecondition) as e:
            client.delete("py", task)
        assert isinstance(e.value, berth_client.BerthError)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        client.terminate("py", task, grace=0)
        client.wait("py", task, timeout=30)
    client.delete("py", task)  # completed: now it may go
    with pytest.raises(berth_client.NotFound):
        client.get_task("py", task)


def test_unavailable_for_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    # A socket file that exists (as a stale one after a crash) but is not listened on.
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    try:
        with berth_client.connect(f"unix://{path}") as c:
            with pytest.raises(berth_client.Unavailable) as e:
                c.node(timeout=10)
            assert isinstance(e.value, berth_client.BerthError)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()
    # And one that does not exist at all.
    with berth_client.connect(f"unix://{tmp_path}/missing.sock") as c:
        with pytest.raises(berth_client.Unavailable):
            c.node(timeout=10)
    # A watch without reconnecting gives up at once, with the same error.
    with berth_client.connect(f"unix://{tmp_path}/missing.sock") as c:
        with pytest.raises(berth_client.Unavailable):
            next(c.watch(0, reconnect=False))


def test_wait_times_out_with_deadline_exceeded(client: berth_client.Client) -> None:
    task = unique("slow")
    client.run_task("py", task, "/bin/sleep 30", image=image("busybox"))
    try:
        with pytest.raises(berth_client.DeadlineExceeded) as e:
            client.wait("py", task, timeout=0.5)
        assert isinstance(e.value, TimeoutError)
    finally:
        client.terminate("py", task, grace=0)
        client.wait("py", task, timeout=30)


@pytest.mark.parametrize(
    "addr",
    ["tcp://127.0.0.1:1", "http://10.0.0.1:7070", "unix://relative.sock", "http://127.0.0.1"],
)
def test_bad_addresses_are_refused_before_connecting(addr: str) -> None:
    with pytest.raises(ValueError):
        berth_client.connect(addr)
