"""The :authority fix: with grpcio's default options a unix:// channel sends the
percent-encoded socket path as :authority (grpcio >= 1.57), which h2 under the
agent's tonic server refuses (RST_STREAM PROTOCOL_ERROR: INTERNAL here);
connect() sets grpc.default_authority = localhost and works.

If a grpcio version ever sends an authority h2 accepts, the first test fails
and says so: then the fix is no longer needed with that version (keep it for
the others).
"""

from __future__ import annotations

import re
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
def test_default_grpcio_channel_is_refused(h2_agent: Agent, form: str) -> None:
    target = form.format(h2_agent.socket)
    with grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            stub(ch).GetNode(pb.GetNodeRequest(), timeout=10)
    code, details = e.value.code(), e.value.details() or ""
    print(f"grpcio {grpc.__version__}, {target}: {code.name}: {details}")
    assert code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE), (code, details)
    if code == grpc.StatusCode.INTERNAL:
        assert "RST_STREAM" in details
    # The agent's h2 says why: the authority grpcio made of the socket path.
    encoded = str(h2_agent.socket).lstrip("/").replace("/", "%2F")
    assert re.search(r"malformed authority \(b\"[^\"]*%2F", h2_agent.log()), h2_agent.log()[-3000:]
    assert encoded in h2_agent.log()


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
