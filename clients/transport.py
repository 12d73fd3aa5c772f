"""The four tritonclient transports (HTTP and gRPC, sync and asyncio) behind one small interface.

A transport answers ``Call``s (metadata, config, infer), turns every failure into a typed ``ClientError``, and, given
a shared-memory ``Slot``, moves tensors through shared memory instead of the socket.

Everything a transport does is written once, as a generator of operations: it yields an ``Op`` (a method of the
tritonclient client to call, with its arguments) or a ``Pause``, and receives the answer or has the translated error
thrown in. Retries with backoff, registering shared memory before an inference, unregistering it (waiting while
Triton still holds a region), waiting for readiness, and the step generators of ``discovery.py`` and ``batches.py``
are all such programs. ``SyncTransport.run`` and ``AsyncTransport.run`` are the two thin drivers that carry them out,
with blocking or awaited calls; so the logic of a classification exists once. What differs between HTTP and gRPC
lives in one adapter per protocol (``_Http``, ``_Grpc``).

Readiness, health, metadata, configuration and inference are open APIs; shared-memory registration is restricted
by ``serve`` and the chart, so those calls always carry the admin key; the model configuration is sent it too when one
was given (HTTP header ``triton-admin-key``, gRPC metadata ``triton-grpc-protocol-triton-admin-key``) and is reported as
unavailable (``None``) when the server refuses it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import random
import threading
import time
import warnings
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from triton_deploy.contract import ADMIN_HEADER
from triton_deploy.errors import ClientError, Problem, raise_problems

from .discovery import Call
from .errors import InvalidInputError, ModelNotFoundError, ServerUnavailableError, TlsError, is_restricted, translate
from .shm import Region, Slot, place_inputs, place_outputs
from .tls import TlsOptions

PROTOCOLS = ("http", "grpc")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

# After answering a request with an error, Triton can hold the request's shared-memory regions a moment longer and
# refuses to unregister them meanwhile ("currently in use"); wait that out rather than leave them registered.
IN_USE_WAIT_S = 5.0
IN_USE_POLL_S = 0.02


def _in_use(exc: Exception) -> bool:
    return "currently in use" in str(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """Connection failures and 503/UNAVAILABLE are retried (inference is idempotent); other errors are not."""

    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delays(self) -> list[float]:
        # Full jitter keeps many clients that failed together from retrying in lockstep.
        return [min(self.max_backoff_s, self.backoff_s * 2 ** n) * (0.5 + random.random() / 2)
                for n in range(self.retries)]


UNREGISTER_RETRY = RetryPolicy(retries=2, backoff_s=0.05)  # a cleanup call: a short retry, then a warning


def has_port(url: str) -> bool:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), with any scheme left out of the question."""
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    return bool(host) and port.isdigit() and (not host.startswith("[") or host.endswith("]"))


@dataclass(frozen=True)
class Connection:
    """Where and how to talk to the server."""

    url: str
    protocol: str = "http"
    timeout_s: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)
    admin_key: str | None = None
    tls: TlsOptions | None = None  # None: plaintext. gRPC TLS to Triton itself; HTTP TLS means HTTPS to a gateway

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.protocol not in PROTOCOLS:
            problems.append((f"protocol must be 'http' or 'grpc', not {self.protocol!r}", "--protocol"))
        if "://" in self.url:
            problems.append((f"url {self.url!r} must be HOST:PORT without a scheme", "--url"))
        elif not has_port(self.url):  # without one, a dial goes to port 80 and reads as "nothing listens"
            problems.append((f"url {self.url!r} is missing a port",
                             "--url HOST:PORT; Triton's defaults are 8000 for HTTP, 8001 for gRPC"))
        if self.timeout_s <= 0:
            problems.append((f"timeout must be positive, not {self.timeout_s}", "--timeout"))
        return problems

    def check(self) -> None:
        """The TLS files' problems as one ``UsageError`` (as ``--tls-*`` flags are refused), then one
        ``InvalidInputError`` naming every other problem (the client library's error for an unusable argument)."""
        if self.tls is not None:
            self.tls.check()
        raise_problems(self.problems(), InvalidInputError)


# ---- operations: what a program asks its driver to do ----------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One call of a tritonclient client method: ``client.<method>(*args, **kwargs)``. ``model`` is named in a
    translated error; with ``restricted_is_none`` a refusal for want of the admin key answers None instead."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    model: str = ""
    restricted_is_none: bool = False


@dataclass(frozen=True)
class Pause:
    """Wait this long before the next operation (a retry's backoff, a polling interval)."""

    seconds: float


T = TypeVar("T")
Program = Generator[Op | Pause, Any, T]  # sent each operation's answer; a failed one's ClientError is thrown in
Outcome = tuple[Any, ClientError | None]  # what a driver hands back to a program: (answer, None) or (None, error)


# ---- the one place HTTP and gRPC differ ---------------------------------------------------------------------------


class _Protocol:
    """What differs between HTTP and gRPC: the client classes and their arguments, the admin header's name, per-call
    timeouts, JSON answers, binary tensors and the shape of the shared-memory status. One subclass per protocol;
    the transports and the programs ask it rather than branching on the protocol."""

    module_name: str  # the tritonclient package; its ``.aio`` holds the asyncio client
    admin_header = ADMIN_HEADER
    shares_sync_client = False  # whether one synchronous client may serve every thread
    tensor_kw: Mapping[str, Any] = {}  # for set_data_from_numpy and InferRequestedOutput

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.module = importlib.import_module(self.module_name)  # its tensor classes serve the asyncio client too

    def sync_client(self) -> Any:
        return self.module.InferenceServerClient(self.connection.url, **self.client_args(for_asyncio=False))

    def async_client(self) -> Any:
        aio = importlib.import_module(self.module_name + ".aio")
        return aio.InferenceServerClient(self.connection.url, **self.client_args(for_asyncio=True))

    def client_args(self, for_asyncio: bool) -> dict[str, Any]:
        raise NotImplementedError

    def kw(self, admin: bool = False) -> dict[str, Any]:
        headers = dict(self.connection.headers)
        if admin and self.connection.admin_key:
            headers[self.admin_header] = self.connection.admin_key
        return {"headers": headers or None}

    def json_kw(self, admin: bool = False) -> dict[str, Any]:
        """``kw`` for calls whose answer is a document."""
        return self.kw(admin)

    def async_deadline_s(self) -> float | None:
        """An outer bound on an awaited call, for a client that has no per-call timeout of its own."""
        return None

    def region_names(self, status: Any) -> list[str]:
        raise NotImplementedError


class _Http(_Protocol):
    module_name = "tritonclient.http"
    tensor_kw = {"binary_data": True}  # tensors travel as binary, not as JSON lists

    def client_args(self, for_asyncio: bool) -> dict[str, Any]:
        timeout, tls = self.connection.timeout_s, self.connection.tls
        if for_asyncio:
            secure = {"ssl": True, "ssl_context": tls.ssl_context()} if tls else {}
            return {"conn_timeout": timeout} | secure
        return {"connection_timeout": timeout, "network_timeout": timeout} | (tls.http_args() if tls else {})

    def async_deadline_s(self) -> float | None:
        return self.connection.timeout_s  # aiohttp's total timeout covers a call; keep the same bound

    def region_names(self, status: Any) -> list[str]:
        return sorted(r["name"] for r in status)  # [{"name": ...}]


class _Grpc(_Protocol):
    module_name = "tritonclient.grpc"
    admin_header = GRPC_HEADER_PREFIX + ADMIN_HEADER
    shares_sync_client = True  # the gRPC client is thread-safe: one channel for all threads

    def client_args(self, for_asyncio: bool) -> dict[str, Any]:
        tls = self.connection.tls
        return tls.grpc_args() if tls else {}

    def kw(self, admin: bool = False) -> dict[str, Any]:
        return super().kw(admin) | {"client_timeout": self.connection.timeout_s}

    def json_kw(self, admin: bool = False) -> dict[str, Any]:
        return self.kw(admin) | {"as_json": True}  # protobuf messages otherwise

    def region_names(self, status: Any) -> list[str]:
        return sorted(status.get("regions", {}))  # {"regions": {name: {...}}}


_ADAPTERS: dict[str, type[_Protocol]] = {"http": _Http, "grpc": _Grpc}


# ---- building requests and reading results (shared by all four transports) ------------------------------------


class _Request:
    """The tritonclient objects for one ``Call``, in-band or through a shared-memory slot."""

    def __init__(self, protocol: _Protocol, call: Call, slot: Slot | None) -> None:
        module, binary = protocol.module, protocol.tensor_kw
        self.call, self.slot = call, slot
        self.inputs, self.outputs = [], []
        self.placed_in, self.payloads, self.in_bytes = place_inputs(call.inputs) if slot else ([], [], 0)
        batch = next(iter(call.inputs.values()))[1].shape[0]
        self.placed_out, self.out_bytes = place_outputs(call.outputs, batch) if slot else ([], 0)
        placed_in = {p.name for p in self.placed_in}
        for name, (dtype, array) in call.inputs.items():
            tensor = module.InferInput(name, list(array.shape), dtype)
            if name not in placed_in:  # a placed one is pointed at the slot's region by bind(), once it is sized
                tensor.set_data_from_numpy(array, **binary)
            self.inputs.append(tensor)
        placed_out = {p.name: p for p in self.placed_out}
        for spec in call.outputs:
            self.outputs.append((spec, module.InferRequestedOutput(spec.name, **binary), placed_out.get(spec.name)))

    def bind(self) -> None:
        """Point the shared-memory tensors at the slot's regions (after they were sized)."""
        slot = self.slot
        assert slot is not None  # only calls placed in a slot are bound
        placed_in = {p.name: p for p in self.placed_in}
        for tensor in self.inputs:
            where = placed_in.get(tensor.name())
            if where is not None and slot.input is not None:
                tensor.set_shared_memory(slot.input.name, where.nbytes, where.offset)
        for _spec, output, where in self.outputs:
            if where is not None and slot.output is not None:
                output.set_shared_memory(slot.output.name, where.nbytes, where.offset)
        slot.write(self.placed_in, self.payloads)

    def answer(self, result: Any) -> dict[str, np.ndarray]:
        specs = {spec.name: spec for spec, _o, _w in self.outputs}
        answer = self.slot.read(self.placed_out, specs) if self.slot and self.placed_out else {}
        for spec, _output, where in self.outputs:
            if where is None:
                answer[spec.name] = result.as_numpy(spec.name)
        return answer

    def output_objects(self) -> list[Any]:
        return [output for _s, output, _w in self.outputs]


# ---- programs: each written once for both transports ------------------------------------------------------------


def _ask(op: Op) -> Program[Any]:
    return (yield op)


def _with_retry(attempt: Callable[[], Program[T]], retry: RetryPolicy) -> Program[T]:
    """``attempt()`` again after each ``ServerUnavailableError``, with the policy's backoff; the last one raises."""
    delays = retry.delays()
    while True:
        try:
            return (yield from attempt())
        except TlsError:
            raise  # certificates and ports do not change between retries
        except ServerUnavailableError:
            if not delays:
                raise
        yield Pause(delays.pop(0))


def _drive(protocol: _Protocol, steps: Generator[Call, Any, T], retry: RetryPolicy, slot: Slot | None) -> Program[T]:
    """A step generator of ``discovery.py``/``batches.py``: each ``Call`` answered (with retries) and sent back, or
    its error thrown in."""
    try:
        call = next(steps)
        while True:
            try:
                result = yield from _with_retry(functools.partial(_call, protocol, call, slot), retry)
            except ClientError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        return done.value


def _call(protocol: _Protocol, call: Call, slot: Slot | None) -> Program[Any]:
    """One ``Call``: metadata, the configuration (None when the server refuses it without the admin key), or an
    inference, through ``slot``'s shared-memory regions when one is given."""
    if call.kind == "metadata":
        return (yield Op("get_model_metadata", (call.model, call.version), protocol.json_kw(), call.model))
    if call.kind == "config":
        return (yield Op("get_model_config", (call.model,), protocol.json_kw(admin=True), call.model,
                         restricted_is_none=True))
    request = _Request(protocol, call, slot)
    if slot is not None:
        yield from _register(protocol, slot, request, call.model)
        request.bind()
    extra = {"parameters": call.parameters} if call.parameters else {}  # e.g. the tooling mark of a probe
    result = yield Op("infer", (call.model, request.inputs), {"model_version": call.version,
                                                              "outputs": request.output_objects(), **extra,
                                                              **protocol.kw()},
                      call.model)
    return request.answer(result)


def _register(protocol: _Protocol, slot: Slot, request: _Request, model: str) -> Program[None]:
    """The shared-memory work before an inference: a region too small for this request is unregistered and
    destroyed, then each region the server does not know yet is created and registered."""
    stale, _fresh = slot.resize(request.in_bytes, request.out_bytes)
    for region in stale:
        yield from _unregister(protocol, region)
        region.destroy()
    for region in (r for r in (slot.input, slot.output) if r is not None):
        if region.handle is None:
            region.create()
        if not region.registered:
            region.registered = True  # set first: a call that fails late (or is cancelled) may still have registered it
            try:
                yield Op("register_system_shared_memory", (region.name, region.key, region.size), protocol.kw(admin=True),
                         model)
            except ServerUnavailableError:
                region.registered = False  # never reached the server: register again on the retry
                raise
            except ClientError as exc:
                if "restricted" in getattr(exc, "server_message", ""):
                    region.registered = False  # refused for want of the admin key: nothing to unregister
                raise


def _unregister(protocol: _Protocol, region: Region) -> Program[None]:
    """Best effort: keeps trying while Triton still holds the region, else warns; the caller unlinks it anyway."""
    if not region.registered:
        return
    deadline = time.monotonic() + IN_USE_WAIT_S
    op = Op("unregister_system_shared_memory", (region.name,), protocol.kw(admin=True))
    while True:
        try:
            yield from _with_retry(lambda: _ask(op), UNREGISTER_RETRY)
            break
        except ClientError as exc:
            if not _in_use(exc) or time.monotonic() >= deadline:
                # The region is unlinked locally anyway; say what the server may still hold.
                warnings.warn(f"could not unregister shared-memory region {region.name}: {exc}", stacklevel=2)
                break
        yield Pause(IN_USE_POLL_S)
    region.registered = False


def _wait_ready(protocol: _Protocol, model: str, timeout_s: float, retry: RetryPolicy | None) -> Program[None]:
    """Poll until the model is ready; an unknown model fails at once, a port where no server of this protocol
    answers after the retries of ``retry``, a server that answers but is not ready after ``timeout_s``."""
    patience = _ReadyPatience(protocol.connection, model, timeout_s, retry)
    while True:
        error = None
        try:
            if (yield Op("is_model_ready", (model,), protocol.kw(), model)):
                return
            if (yield Op("is_server_ready", (), protocol.kw())):
                yield from _call(protocol, Call("metadata", model), None)  # ModelNotFoundError for an unknown model
        except ServerUnavailableError as exc:
            error = exc
        yield Pause(patience.pause_after(error))


def _shm_status(protocol: _Protocol) -> Program[list[str]]:
    return protocol.region_names((yield Op("get_system_shared_memory_status", (), protocol.json_kw(admin=True))))


class _ReadyPatience:
    """How long ``wait_ready`` keeps polling. A server that answers but is not ready yet (models loading) gets the
    whole ready timeout; a refused connection or the other protocol's port gets only the retries of the retry
    policy (about a second by default): no server of this protocol is there, and waiting does not open a port."""

    def __init__(self, connection: Connection, model: str, timeout_s: float, retry: RetryPolicy | None) -> None:
        self.connection, self.model, self.timeout_s = connection, model, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.delay = 0.1
        self.no_server_delays = (retry or RetryPolicy()).delays()

    def pause_after(self, error: ServerUnavailableError | None) -> float:
        """Seconds to wait before the next poll; raises the final error when polling should stop."""
        remaining = self.deadline - time.monotonic()
        if isinstance(error, TlsError):
            raise error
        if error is not None and error.no_server:
            if not self.no_server_delays or remaining <= 0:
                raise error
            return min(self.no_server_delays.pop(0), remaining)
        if remaining <= 0:
            raise _not_ready(self.connection, self.model, self.timeout_s, error)
        pause, self.delay = min(self.delay, remaining), min(self.delay * 2, 1.0)
        return pause


def _not_ready(connection: Connection, model: str, timeout_s: float, error: ClientError | None) -> ClientError:
    if error is not None:
        return ServerUnavailableError(f"no Triton server ready at {connection.url} within {timeout_s:g} s "
                                      f"({connection.protocol}): {error.message}",
                                      hint="check --url/--protocol and that the server runs; raise --ready-timeout")
    return ModelNotFoundError(f"model '{model}' at {connection.url} did not become ready within {timeout_s:g} s",
                              hint="check the server log, or raise --ready-timeout")


# ---- the transports: what they offer, and one thin driver each --------------------------------------------------


def _resume(program: Program[Any], outcome: Outcome) -> Op | Pause | StopIteration:
    """The program's next operation after ``outcome``; its end as the ``StopIteration`` that carries its value
    (a StopIteration cannot cross a Future, so it is handed over as a value)."""
    answer, error = outcome
    try:
        return program.throw(error) if error is not None else program.send(answer)
    except StopIteration as done:
        return done


class _Transport:
    """The methods both transports offer, each one program; ``run`` carries it out and returns the result for
    ``SyncTransport``, an awaitable of it for ``AsyncTransport``."""

    def __init__(self, connection: Connection) -> None:
        connection.check()  # before anything is dialled (ClassifierOptions.check has usually done it already)
        self.connection = connection
        self.protocol = _ADAPTERS[connection.protocol](connection)

    def run(self, program: Program[Any]) -> Any:
        raise NotImplementedError

    def drive(self, steps: Generator[Call, Any, Any], retry: RetryPolicy, slot: Slot | None = None) -> Any:
        """Run a step generator of ``discovery.py``/``batches.py``, with retries, through ``slot`` if given."""
        return self.run(_drive(self.protocol, steps, retry, slot))

    def wait_ready(self, model: str, timeout_s: float, retry: RetryPolicy | None = None) -> Any:
        """Until ``model`` is ready; see ``_wait_ready`` for when it gives up."""
        return self.run(_wait_ready(self.protocol, model, timeout_s, retry))

    def unregister(self, region: Region) -> Any:
        """Unregister a region from the server, best effort: the caller unlinks it locally either way."""
        return self.run(_unregister(self.protocol, region))

    def shm_status(self) -> Any:
        """Names of the system shared-memory regions registered on the server."""
        return self.run(_shm_status(self.protocol))

    def _failed(self, op: Op, exc: Exception) -> Outcome:
        """The outcome of an operation that raised: None for a refused admin call that allows it, else the error
        translated into a ``ClientError``."""
        if op.restricted_is_none and is_restricted(exc):
            return None, None
        connection = self.connection
        error = translate(exc, url=connection.url, model=op.model, protocol=connection.protocol, tls=connection.tls)
        if error is not exc:
            error.__cause__ = exc
        return None, error


class SyncTransport(_Transport):
    """tritonclient.http or tritonclient.grpc. Thread-safe: a client that is not thread-safe itself (HTTP) is
    created once per thread; a thread-safe one (gRPC) is shared."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def run(self, program: Program[T]) -> T:
        """The synchronous driver: each operation carried out, blocking."""
        step = _resume(program, (None, None))
        while not isinstance(step, StopIteration):
            step = _resume(program, self._execute(step))
        return step.value

    def _execute(self, step: Op | Pause) -> Outcome:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None, None
        method = getattr(self._client(), step.method)
        try:
            return method(*step.args, **step.kwargs), None
        except Exception as exc:  # tritonclient, gRPC, gevent and socket errors alike
            return self._failed(step, exc)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            with self._lock:  # creating a client opens no connection: cheap enough to hold the lock
                if self.protocol.shares_sync_client and self._clients:
                    client = self._clients[0]
                else:
                    client = self.protocol.sync_client()
                    self._clients.append(client)
            self._local.client = client
        return client

    def close(self) -> None:
        """Close every thread's client now, rather than whenever the garbage collector gets to them."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
                pass


class AsyncTransport(_Transport):
    """tritonclient.http.aio (aiohttp) or tritonclient.grpc.aio; one client shared by all tasks of a loop."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self.client = self.protocol.async_client()

    async def run(self, program: Program[T]) -> T:
        """The asyncio driver. The first step (reading files, encoding or decoding images) runs in a worker thread
        so the event loop is not blocked by it."""
        step = await asyncio.to_thread(_resume, program, (None, None))
        while not isinstance(step, StopIteration):
            step = _resume(program, await self._execute(step))
        return step.value

    async def _execute(self, step: Op | Pause) -> Outcome:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None, None
        try:
            call = getattr(self.client, step.method)(*step.args, **step.kwargs)
            return await asyncio.wait_for(call, self.protocol.async_deadline_s()), None
        except Exception as exc:
            return self._failed(step, exc)

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # noqa: BLE001
            pass
