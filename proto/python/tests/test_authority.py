"""The :authority of stock clients on the unix socket. With grpcio's default
options a unix:// channel sends the percent-encoded socket path as :authority
(grpcio >= 1.57), which h2 under the agent's tonic server refuses on its own
(RST_STREAM PROTOCOL_ERROR). The agent rewrites such an authority on its unix
socket (agent/src/api/authority.rs), so the default channel works; connect()
still sets grpc.default_authority = localhost, which works with any agent.
"""

from __future__ import annotations

from typing import Any, Iterator

import grpc
import pytest

import berth_client
from berth_client import pb, pb_grpc

from conftest import Agent


def stub(ch: grpc.Channel) -> Any:
    """The generated stub (untyped)."""
    return pb_grpc.NodeAgentStub(ch)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def h2_agent() -> Iterator[Agent]:
    # h2's debug log names what it refused.
    a = Agent(log_filter="info,berth_agent=debug,h2::server=debug").start()
    yield a
    a.close()


@pytest.mark.parametrize("form", ["unix://{}", "unix:{}"])
def test_a_default_grpcio_channel_works(h2_agent: Agent, form: str) -> None:
    target = form.format(h2_agent.socket)
    with grpc.insecure_channel(target) as ch:
        s = stub(ch)
        # Unary calls, many on one connection (the header blocks stay in step).
        for _ in range(20):
            assert s.GetNode(pb.GetNodeRequest(), timeout=10).node_id == h2_agent.node_id
        # A server-streaming call.
        events = s.WatchTasks(pb.WatchTasksRequest(from_sequence=0), timeout=2)
        with pytest.raises(grpc.RpcError) as e:
            for _ in events:
                pass
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
    print(f"grpcio {grpc.__version__}, {target}: default options work")
    # h2 refused nothing: the authority it got was one it takes.
    assert "malformed authority" not in h2_agent.log(), h2_agent.log()[-3000:]


def test_the_authority_option_alone_is_the_fix(h2_agent: Agent) -> None:
    opts = [berth_client.UNIX_AUTHORITY_OPTION]
    with grpc.insecure_channel(f"unix://{h2_agent.socket}", options=opts) as ch:
        node = stub(ch).GetNode(pb.GetNodeRequest(), timeout=10)
    assert node.node_id == h2_agent.node_id


def test_connect_works_on_the_unix_socket(h2_agent: Agent) -> None:
    for addr in (h2_agent.addr, f"unix:{h2_agent.socket}", str(h2_agent.socket)):
        with berth_client.connect(addr) as c:
            assert c.node().node_id == h2_agent.node_id


def test_any_valid_authority_works(h2_agent: Agent) -> None:
    # Not only "localhost": h2 wants a syntactically valid authority, whatever it is.
    for authority in ("localhost", "berth-agent", "127.0.0.1:1"):
        opts = [("grpc.default_authority", authority)]
        with grpc.insecure_channel(f"unix://{h2_agent.socket}", options=opts) as ch:
            stub(ch).GetNode(pb.GetNodeRequest(), timeout=10)
