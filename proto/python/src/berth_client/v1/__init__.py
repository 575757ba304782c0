"""Generated messages and stubs of berth.v1 (made from proto/berth/v1/agent.proto
when the package is built)."""

from . import agent_pb2, agent_pb2_grpc

__all__ = ["agent_pb2", "agent_pb2_grpc"]
