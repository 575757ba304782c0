"""A thin, typed client of the berth node agent (service berth.v1.NodeAgent)."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from datetime import timedelta
from typing import (
    Any,
    Callable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
    overload,
)
from urllib.parse import urlsplit

import grpc
from google.protobuf import duration_pb2

from .errors import BerthError, DeadlineExceeded, NotFound, Unavailable, from_rpc_error
from .v1 import agent_pb2 as pb
from .v1 import agent_pb2_grpc as pb_grpc

#: The agent's default address (``[api] listen`` of its config).
DEFAULT_ADDR = "unix:///run/berth/agent.sock"

#: PEM material: the bytes themselves, or the path of a file holding them.
Pem = Union[str, "os.PathLike[str]", bytes]
#: A duration: seconds, or a timedelta.
Seconds = Union[int, float, timedelta]

_T = TypeVar("_T")

log = logging.getLogger("berth_client")

# ReadTaskFile answers up to 4 MiB of data plus the message's framing, over
# grpcio's default 4 MiB receive limit.
_MAX_RECEIVE = 16 * 1024 * 1024

# Reconnect quickly after the agent restarts (grpcio's default backoff grows
# to 120 s); a watch resumes as soon as the agent answers again. Not
# grpc.min_reconnect_backoff_ms: C-core takes it as the timeout of each
# connection attempt (default 20 s), and a TLS handshake on a busy node can
# take longer than a short one.
_BASE_OPTIONS: List[Tuple[str, Any]] = [
    ("grpc.max_receive_message_length", _MAX_RECEIVE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# grpcio >= 1.57 sends the percent-encoded socket path of a unix:// target as
# :authority (e.g. "run%2Fberth%2Fagent.sock"). That is not a valid authority
# (RFC 3986 has no percent-encoding in a host:port authority as the `http`
# crate parses it), so h2 under tonic refuses the request's headers and resets
# the stream (RST_STREAM PROTOCOL_ERROR, seen as INTERNAL by the client). A
# fixed authority is what every other client sends over a unix socket.
UNIX_AUTHORITY_OPTION: Tuple[str, str] = ("grpc.default_authority", "localhost")

_WORKDIR = {
    "task": pb.TASK_WORKING_DIR,
    "image": pb.IMAGE_DEFAULT,
}
_PULL_POLICY = {
    "missing": pb.MISSING,
    "always": pb.ALWAYS,
    "never": pb.NEVER,
}
_HOST_MOUNT = {
    "shared": pb.HOST_MOUNT_SOURCE_SHARED,
    "startup": pb.HOST_MOUNT_SOURCE_STARTUP,
    "vfsmounts": pb.HOST_MOUNT_SOURCE_VFS_MOUNTS,
    "task": pb.HOST_MOUNT_SOURCE_TASK,
    "jobprep": pb.HOST_MOUNT_SOURCE_JOB_PREP,
    "applications": pb.HOST_MOUNT_SOURCE_APPLICATIONS,
}


def _host_mount(entry: str) -> "pb.HostMount":
    """``SOURCE[:ro]``, Batch's names in any case (``Task``, ``Shared:ro``)."""
    name, _, mode = entry.partition(":")
    if mode not in ("", "ro", "rw") or name.lower() not in _HOST_MOUNT:
        raise ValueError(f"{entry!r}: one of Shared, Startup, VfsMounts, Task, JobPrep, Applications, with :ro or :rw")
    return pb.HostMount(source=_HOST_MOUNT[name.lower()], read_only=mode == "ro")


def _pem(value: Optional[Pem]) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    with open(text, "rb") as f:
        return f.read()


def _duration(value: Optional[Seconds]) -> Optional[duration_pb2.Duration]:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _unix_path(addr: str) -> Optional[str]:
    if addr.startswith("unix://"):
        return addr[len("unix://") :]
    if addr.startswith("unix:"):
        return addr[len("unix:") :]
    if addr.startswith("/"):
        return addr
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_for(
    addr: str,
    ca: Optional[Pem] = None,
    cert: Optional[Pem] = None,
    key: Optional[Pem] = None,
    options: Sequence[Tuple[str, Any]] = (),
) -> grpc.Channel:
    """The gRPC channel :func:`connect` uses for ``addr`` (see there)."""
    opts = list(_BASE_OPTIONS) + list(options)
    path = _unix_path(addr)
    if path is not None:
        if not path.startswith("/"):
            raise ValueError(f"bad agent address {addr!r}: the socket path must be absolute")
        if ca or cert or key:
            raise ValueError("TLS material given for a unix socket address")
        if not any(name == UNIX_AUTHORITY_OPTION[0] for name, _ in opts):
            opts.append(UNIX_AUTHORITY_OPTION)
        return grpc.insecure_channel(f"unix://{path}", options=opts)

    url = urlsplit(addr)
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        raise ValueError(
            f"bad agent address {addr!r}: expected unix:///path/to/socket, "
            "http://127.0.0.1:PORT or https://host:PORT"
        )
    target = url.netloc.rsplit("@", 1)[-1]
    if url.scheme == "http":
        if not _is_loopback(url.hostname):
            raise ValueError(f"plain http:// only on loopback (use https:// for {url.hostname})")
        if ca or cert or key:
            raise ValueError("TLS material given for an http:// address (use https://)")
        return grpc.insecure_channel(target, options=opts)

    if (cert is None) != (key is None):
        raise ValueError("mutual TLS needs both cert and key")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_pem(ca),
        private_key=_pem(key),
        certificate_chain=_pem(cert),
    )
    return grpc.secure_channel(target, creds, options=opts)


def connect(
    addr: str = DEFAULT_ADDR,
    ca: Optional[Pem] = None,
    cert: Optional[Pem] = None,
    key: Optional[Pem] = None,
) -> "Client":
    """A client of the agent at ``addr``.

    - ``unix:///path/to/socket`` (also ``unix:/path`` or a bare ``/path``): the
      agent's unix socket, with ``:authority`` set to ``localhost`` (see
      :data:`UNIX_AUTHORITY_OPTION`);
    - ``http://127.0.0.1:PORT``: plain TCP, loopback only;
    - ``https://host:PORT``: TLS; ``ca`` is the CA that signed the agent's
      certificate (default: the system roots), ``cert`` and ``key`` this
      client's certificate and key for mutual TLS.

    PEM material is given as bytes or as the path of a file. The connection is
    made on the first call; an agent that cannot be reached then raises
    :class:`~berth_client.Unavailable`.
    """
    return Client(channel_for(addr, ca=ca, cert=cert, key=key), addr=addr)


class Client:
    """Calls of the agent, with gRPC statuses raised as :class:`BerthError`.

    The generated stub is ``client.stub`` and the messages are
    ``berth_client.pb``, for anything the helpers do not cover.
    """

    def __init__(self, channel: grpc.Channel, addr: str = "", timeout: Optional[float] = 30.0) -> None:
        self.channel = channel
        self.addr = addr
        #: The generated stub (untyped: grpcio-tools makes no .pyi for it).
        self.stub: Any = pb_grpc.NodeAgentStub(channel)  # type: ignore[no-untyped-call]
        #: Deadline of each unary call, in seconds (None: none).
        self.timeout = timeout
        self._closed = threading.Event()

    # -- plumbing ---------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; calls in flight (a watch) end."""
        self._closed.set()
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Callable[..., Any], request: Any, returns: Type[_T], timeout: Optional[float] = None) -> _T:
        try:
            return cast(_T, method(request, timeout=timeout if timeout is not None else self.timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel is connected; Unavailable after ``timeout``."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"agent at {self.addr or 'the channel'} not reachable within {timeout} s") from None

    # -- node ---------------------------------------------------------------

    def node(self, timeout: Optional[float] = None) -> pb.NodeInfo:
        """GetNode: what the node is and how busy it is."""
        return self._unary(self.stub.GetNode, pb.GetNodeRequest(), pb.NodeInfo, timeout)

    # -- tasks --------------------------------------------------------------

    def run_task(
        self,
        job_id: str,
        task_id: str,
        command_line: str = "",
        *,
        image: Optional[str] = None,
        run_options: str = "",
        workdir: Literal["task", "image"] = "task",
        environment: Optional[Mapping[str, str]] = None,
        pull_policy: Optional[Literal["missing", "always", "never"]] = None,
        registry_username: Optional[str] = None,
        registry_password: Optional[str] = None,
        user_name: Optional[str] = None,
        max_wall_clock: Optional[Seconds] = None,
        retention: Optional[Seconds] = None,
        required_slots: int = 0,
        max_task_retry_count: int = 0,
        host_mounts: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
    ) -> pb.TaskInfo:
        """RunTask: the task is accepted (ACTIVE) or refused with an error.

        Without ``image`` it is a host task. ``workdir`` "task" is the task's
        working directory (AZ_BATCH_TASK_WORKING_DIR), "image" the image's WORKDIR.
        ``max_task_retry_count``: how many times a failed attempt runs again
        (-1: no limit). ``host_mounts``: the node directories the container
        gets instead of the whole node root (``["Task", "Shared:ro"]``; ``[]``:
        none; None: the whole root).
        """
        spec = pb.TaskSpec(
            job_id=job_id,
            task_id=task_id,
            command_line=command_line,
            environment=dict(environment or {}),
            required_slots=required_slots,
        )
        if image is not None:
            spec.container.image = image
            spec.container.run_options = run_options
            spec.container.working_directory = _WORKDIR[workdir]
            if pull_policy is not None:
                spec.container.pull_policy = _PULL_POLICY[pull_policy]
            if registry_username is not None or registry_password is not None:
                spec.container.registry.username = registry_username or ""
                spec.container.registry.password = registry_password or ""
            if host_mounts is not None:
                spec.container.host_mounts_set = True
                spec.container.host_mounts.extend(_host_mount(m) for m in host_mounts)
        elif run_options:
            raise ValueError("run_options need an image")
        elif host_mounts is not None:
            raise ValueError("host_mounts need an image")
        spec.constraints.max_task_retry_count = max_task_retry_count
        if user_name is not None:
            spec.user.user_name = user_name
        wall = _duration(max_wall_clock)
        if wall is not None:
            spec.constraints.max_wall_clock_time.CopyFrom(wall)
        keep = _duration(retention)
        if keep is not None:
            spec.constraints.retention_time.CopyFrom(keep)
        return self.run_spec(spec, timeout=timeout)

    def run_spec(self, spec: pb.TaskSpec, timeout: Optional[float] = None) -> pb.TaskInfo:
        """RunTask with a TaskSpec made by hand."""
        return self._unary(self.stub.RunTask, pb.RunTaskRequest(task=spec), pb.TaskInfo, timeout)

    def explain_spec(self, spec: pb.TaskSpec, timeout: Optional[float] = None) -> pb.TaskExplanation:
        """ExplainTask: what RunTask would do with ``spec``, without doing it.

        Returns the identity, image, devices and policy decisions and, in
        ``oci_spec_json``, the exact OCI runtime spec the container would get
        (or in ``failure`` why it has none: ``ImageNotFound`` until the image
        is pulled). A task RunTask would refuse raises the same error.
        """
        return self._unary(self.stub.ExplainTask, pb.ExplainTaskRequest(task=spec), pb.TaskExplanation, timeout)

    def get_task(self, job_id: str, task_id: str, timeout: Optional[float] = None) -> pb.TaskInfo:
        return self._unary(self.stub.GetTask, pb.GetTaskRequest(job_id=job_id, task_id=task_id), pb.TaskInfo, timeout)

    def list_tasks(
        self,
        job_id: str = "",
        state: "pb.TaskState" = pb.TASK_STATE_UNSPECIFIED,
        timeout: Optional[float] = None,
        page_size: int = 0,
    ) -> List[pb.TaskInfo]:
        """ListTasks: every task (or a job's, or those in a state), in acceptance order.

        Follows the agent's pages (``next_page_token``, ``page_size`` tasks
        each; 0: the agent's default) until the last one; ``timeout`` applies
        to each page's call.
        """
        out: List[pb.TaskInfo] = []
        token = ""
        while True:
            req = pb.ListTasksRequest(job_id=job_id, state=state, page_token=token, page_size=page_size)
            r = self._unary(self.stub.ListTasks, req, pb.ListTasksResponse, timeout)
            out.extend(r.tasks)
            if not r.next_page_token:
                return out
            token = r.next_page_token

    def wait(self, job_id: str, task_id: str, timeout: Optional[float] = None, poll: float = 0.1) -> pb.TaskInfo:
        """Waits until the task is COMPLETED and returns it.

        Raises :class:`~berth_client.DeadlineExceeded` (also a TimeoutError)
        after ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            t = self.get_task(job_id, task_id)
            if t.state == pb.COMPLETED:
                return t
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"{job_id}/{task_id} not completed after {timeout} s (state {pb.TaskState.Name(t.state)})"
                )
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def terminate(
        self, job_id: str, task_id: str, grace: Optional[Seconds] = None, timeout: Optional[float] = None
    ) -> pb.TaskInfo:
        """TerminateTask: SIGTERM, then SIGKILL after ``grace`` (default: the agent's)."""
        req = pb.TerminateTaskRequest(job_id=job_id, task_id=task_id)
        g = _duration(grace)
        if g is not None:
            req.grace_period.CopyFrom(g)
        return self._unary(self.stub.TerminateTask, req, pb.TaskInfo, timeout)

    def delete(self, job_id: str, task_id: str, timeout: Optional[float] = None) -> None:
        """DeleteTask: removes a completed task's record and directory."""
        self._unary(self.stub.DeleteTask, pb.DeleteTaskRequest(job_id=job_id, task_id=task_id), pb.DeleteTaskResponse, timeout)

    # -- watch --------------------------------------------------------------

    def watch(
        self,
        from_sequence: int = 0,
        *,
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
    ) -> Iterator[pb.TaskEvent]:
        """WatchTasks: the events after ``from_sequence``, then live ones, forever.

        The last sequence seen is tracked; when the stream breaks (the agent
        restarted: UNAVAILABLE, or it ended the stream as it shut down) the
        watch reconnects and resumes from it, so nothing is missed and nothing
        is seen twice. Raises Unavailable when the agent has not answered
        again within ``reconnect_timeout`` seconds (or at once with
        ``reconnect=False``), OutOfRange when the agent's log no longer holds
        that point. Ends when the client is closed.
        """
        last = from_sequence
        outage_since: Optional[float] = None
        while True:
            started = time.monotonic()
            call = self.stub.WatchTasks(pb.WatchTasksRequest(from_sequence=last))
            failure: Optional[BerthError] = None
            try:
                for msg in call:
                    ev = cast(pb.TaskEvent, msg)
                    if ev.sequence <= last:
                        continue  # never the same event twice
                    last = ev.sequence
                    outage_since = None
                    yield ev
                failure = Unavailable("the agent ended the watch stream")
            except grpc.RpcError as e:
                if self._closed.is_set():
                    return
                failure = from_rpc_error(e)
                if not isinstance(failure, Unavailable):
                    raise failure from e
            finally:
                call.cancel()
            if self._closed.is_set():
                return
            if not reconnect:
                raise failure
            log.info("watch: %s; resuming after sequence %d", failure, last)
            now = time.monotonic()
            if outage_since is None or now - started > 5.0:
                outage_since = now  # a new outage (the stream had been up)
            remaining = reconnect_timeout - (now - outage_since)
            if remaining <= 0:
                raise Unavailable(f"watch: agent not back within {reconnect_timeout} s: {failure.message}")
            try:
                self.wait_ready(timeout=remaining)
            except Unavailable:
                if self._closed.is_set():
                    return
                raise Unavailable(f"watch: agent not back within {reconnect_timeout} s: {failure.message}") from None
            except ValueError:  # the channel was closed meanwhile
                return
            time.sleep(0.05)

    # -- files --------------------------------------------------------------

    @overload
    def read_file(
        self,
        job_id: str,
        task_id: str,
        path: str = ...,
        offset: int = ...,
        *,
        follow: Literal[False] = ...,
        length: int = ...,
        poll: float = ...,
    ) -> bytes: ...

    @overload
    def read_file(
        self,
        job_id: str,
        task_id: str,
        path: str = ...,
        offset: int = ...,
        *,
        follow: Literal[True],
        length: int = ...,
        poll: float = ...,
    ) -> Iterator[bytes]: ...

    def read_file(
        self,
        job_id: str,
        task_id: str,
        path: str = "stdout.txt",
        offset: int = 0,
        *,
        follow: bool = False,
        length: int = 0,
        poll: float = 0.2,
    ) -> Union[bytes, Iterator[bytes]]:
        """ReadTaskFile: a file under the task directory (``stdout.txt``,
        ``stderr.txt``, ``wd/output.txt``...) from ``offset``.

        Without ``follow``: the bytes up to the end of the file (at most
        ``length`` if it is not 0), in as many calls as it takes. With
        ``follow``: an iterator of chunks as the file grows, ending once the
        task is COMPLETED and everything it wrote was read.
        """
        if follow:
            return self._follow(job_id, task_id, path, offset, poll)
        out = bytearray()
        while True:
            want = 0 if length == 0 else length - len(out)
            r = self._read(job_id, task_id, path, offset + len(out), want)
            out += r.data
            if r.eof or not r.data or (length and len(out) >= length):
                return bytes(out)

    def _read(self, job_id: str, task_id: str, path: str, offset: int, length: int) -> pb.ReadTaskFileResponse:
        req = pb.ReadTaskFileRequest(job_id=job_id, task_id=task_id, path=path, offset=offset, length=length)
        return self._unary(self.stub.ReadTaskFile, req, pb.ReadTaskFileResponse)

    def _follow(self, job_id: str, task_id: str, path: str, offset: int, poll: float) -> Iterator[bytes]:
        while True:
            # The state is taken before the read: once a completed task's
            # file was read to its end, nothing more will be written.
            done = self.get_task(job_id, task_id).state == pb.COMPLETED
            try:
                r = self._read(job_id, task_id, path, offset, 0)
            except NotFound:
                # A task waiting for a slot (or being prepared) has no
                # directory yet; a completed one never will.
                if done:
                    raise
                time.sleep(poll)
                continue
            if r.data:
                offset += len(r.data)
                yield r.data
            if r.eof or not r.data:
                if done:
                    return
                time.sleep(poll)

    # -- images -------------------------------------------------------------

    def pull(
        self,
        reference: str,
        *,
        username: Optional[str] = None,
        password: Optional[str] = None,
        identity_token: Optional[str] = None,
        progress: Optional[Callable[[pb.PullProgress], None]] = None,
        timeout: Optional[float] = None,
    ) -> pb.PullProgress:
        """PullImage: pulls an image onto the node; ``progress`` is called with
        each progress message. Returns the final (``done``) message."""
        req = pb.PullImageRequest(reference=reference)
        if username is not None or password is not None or identity_token is not None:
            req.credentials.username = username or ""
            req.credentials.password = password or ""
            req.credentials.identity_token = identity_token or ""
        call = self.stub.PullImage(req, timeout=timeout)
        try:
            for msg in call:
                p = cast(pb.PullProgress, msg)
                if progress is not None:
                    progress(p)
                if p.done:
                    return p
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()
        raise BerthError(f"pull of {reference}: the stream ended without a done message")
