"""Python client of the berth node agent (gRPC service ``berth.v1.NodeAgent``).

>>> import berth_client
>>> with berth_client.connect("unix:///run/berth/agent.sock") as agent:
...     agent.run_task("j1", "t1", "/bin/sh -c 'echo hi'", image="busybox")
...     print(agent.wait("j1", "t1", timeout=60).exit_code)
...     print(agent.read_file("j1", "t1", "stdout.txt").decode())
"""

from .client import DEFAULT_ADDR, UNIX_AUTHORITY_OPTION, Client, channel_for, connect
from .errors import (
    AlreadyExists,
    BerthError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from .v1 import agent_pb2 as pb
from .v1 import agent_pb2_grpc as pb_grpc

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDR",
    "UNIX_AUTHORITY_OPTION",
    "Client",
    "channel_for",
    "connect",
    "BerthError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "Unavailable",
    "PermissionDenied",
    "ResourceExhausted",
    "OutOfRange",
    "DeadlineExceeded",
    "from_rpc_error",
    "pb",
    "pb_grpc",
]
