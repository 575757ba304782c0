"""gRPC statuses of the agent as Python exceptions.

Every error a call of :class:`berth_client.Client` raises is a
:class:`BerthError`; the statuses the API documents have a subclass each.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class BerthError(Exception):
    """An error answered by the agent (or the transport), with its gRPC status."""

    #: The status code this class stands for (``None`` on the base class).
    status: Optional[grpc.StatusCode] = None

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        #: The gRPC status code the agent answered with.
        self.code: grpc.StatusCode = code or self.status or grpc.StatusCode.UNKNOWN

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(BerthError):
    """The request is wrong and will stay wrong (a bad id, image, run option...)."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BerthError):
    """No such task, job, image or file."""

    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BerthError):
    """A task with this job and task id was already accepted."""

    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(BerthError):
    """The task (or node) is not in a state that allows the call."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(BerthError):
    """The agent could not be reached (or a registry, for a pull)."""

    status = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(BerthError):
    """Refused: a client certificate not allowed, or a registry's unauthorized."""

    status = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(BerthError):
    """A request too large, or too many streams."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(BerthError):
    """WatchTasks: the event log no longer (or never) holds that sequence."""

    status = grpc.StatusCode.OUT_OF_RANGE


class DeadlineExceeded(BerthError, TimeoutError):
    """The call (or a helper's timeout, as in ``wait``) ran out of time."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: Dict[grpc.StatusCode, Type[BerthError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        PermissionDenied,
        ResourceExhausted,
        OutOfRange,
        DeadlineExceeded,
    )
    if cls.status is not None
}


def from_rpc_error(err: grpc.RpcError) -> BerthError:
    """The :class:`BerthError` for a failed gRPC call."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
    cls = _BY_CODE.get(code, BerthError)
    e = cls(details, code)
    e.__cause__ = err
    return e
