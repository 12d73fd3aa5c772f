"""The four tritonclient transports (HTTP and gRPC, sync and asyncio) behind one small interface.

A transport answers ``Call``s (ready, metadata, config, infer), turns every failure into a typed ``ClientError``,
and, given a shared-memory ``Slot``, moves tensors through shared memory instead of the socket. ``drive_sync`` and
``drive_async`` run the step generators of ``discovery.py`` and ``batches.py`` against a transport with retries, so
the logic of a classification exists once.

Readiness, health, metadata and inference are open APIs; the model configuration is sent the admin key when one was
given (HTTP header ``triton-admin-key``, gRPC metadata ``triton-grpc-protocol-triton-admin-key``) and is reported as
unavailable (``None``) when the server refuses it.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
import warnings
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triton_deploy.contract import ADMIN_HEADER
from triton_deploy.errors import ClientError

from .discovery import Call
from .errors import InvalidInputError, ModelNotFoundError, ServerUnavailableError, is_restricted, translate
from .shm import Region, Slot, place_inputs, place_outputs

PROTOCOLS = ("http", "grpc")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

# After answering a request with an error, Triton can hold the request's shared-memory regions a moment longer and
# refuses to unregister them meanwhile ("currently in use"); wait that out rather than leave them registered.
IN_USE_WAIT_S = 5.0
IN_USE_POLL_S = 0.02


def _in_use(exc: Exception) -> bool:
    return "currently in use" in str(exc)


@dataclass(frozen=True)
class TlsOptions:
    """gRPC TLS: PEM file paths. With none of them set, TLS uses the system's root certificates."""

    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None


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


@dataclass(frozen=True)
class Connection:
    """Where and how to talk to the server."""

    url: str
    protocol: str = "http"
    timeout_s: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)
    admin_key: str | None = None
    tls: TlsOptions | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidInputError(f"protocol must be 'http' or 'grpc', not {self.protocol!r}", hint="--protocol")
        if "://" in self.url:
            raise InvalidInputError(f"url {self.url!r} must be HOST:PORT without a scheme", hint="--url")
        if self.tls is not None and self.protocol != "grpc":
            raise InvalidInputError("TLS options apply to gRPC; for HTTPS use a gateway in front of the server",
                                    hint="--protocol grpc")
        if self.timeout_s <= 0:
            raise InvalidInputError(f"timeout must be positive, not {self.timeout_s}", hint="--timeout")

    def call_headers(self, *, admin: bool = False) -> dict[str, str] | None:
        headers = dict(self.headers)
        if admin and self.admin_key:
            name = ADMIN_HEADER if self.protocol == "http" else GRPC_HEADER_PREFIX + ADMIN_HEADER
            headers[name] = self.admin_key
        return headers or None


class _Protocol:
    """What differs between HTTP and gRPC around a call, in one place: headers, the per-call timeout, JSON answers
    and the gRPC client's TLS arguments. Both transports, sync and asyncio, ask it rather than branching."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.grpc = connection.protocol == "grpc"

    def kw(self, admin: bool = False) -> dict[str, Any]:
        kw: dict[str, Any] = {"headers": self.connection.call_headers(admin=admin)}
        if self.grpc:
            kw["client_timeout"] = self.connection.timeout_s
        return kw

    def json_kw(self, admin: bool = False) -> dict[str, Any]:
        """``kw`` for calls whose answer is a document: gRPC returns protobuf messages unless asked for JSON."""
        return self.kw(admin) | ({"as_json": True} if self.grpc else {})

    def grpc_client_args(self) -> dict[str, Any]:
        tls = self.connection.tls
        return {"ssl": tls is not None, "root_certificates": tls and tls.root_certificates,
                "private_key": tls and tls.private_key, "certificate_chain": tls and tls.certificate_chain}


# ---- building requests and reading results (shared by all four transports) ------------------------------------


class _Request:
    """The tritonclient objects for one ``Call``, in-band or through a shared-memory slot."""

    def __init__(self, module: Any, call: Call, slot: Slot | None) -> None:
        self.call, self.slot, self.http = call, slot, module.__name__.startswith("tritonclient.http")
        self.inputs, self.outputs = [], []
        self.placed_in, self.payloads, self.in_bytes = place_inputs(call.inputs) if slot else ([], [], 0)
        batch = next(iter(call.inputs.values()))[1].shape[0]
        self.placed_out, self.out_bytes = place_outputs(call.outputs, batch) if slot else ([], 0)
        placed_in = {p.name: p for p in self.placed_in}
        for name, (dtype, array) in call.inputs.items():
            tensor = module.InferInput(name, list(array.shape), dtype)
            if name in placed_in:
                pass  # pointed at the slot's region by bind(), once the region is sized
            elif self.http:
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            self.inputs.append(tensor)
        placed_out = {p.name: p for p in self.placed_out}
        for spec in call.outputs:
            output = module.InferRequestedOutput(spec.name, binary_data=True) if self.http else \
                module.InferRequestedOutput(spec.name)
            self.outputs.append((spec, output, placed_out.get(spec.name)))

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


def _shm_steps(slot: Slot, request: _Request) -> Generator[tuple[str, Region], None, None]:
    """The shared-memory work before an inference, as steps both transports carry out: ``("unregister", region)``
    for a region too small for this request (destroyed once unregistered), then ``("register", region)`` for each
    region the server does not know yet. An error thrown back into a registration step is re-raised."""
    stale, _fresh = slot.resize(request.in_bytes, request.out_bytes)
    for region in stale:
        yield "unregister", region
        region.destroy()
    for region in (r for r in (slot.input, slot.output) if r is not None):
        if region.handle is None:
            region.create()
        if not region.registered:
            region.registered = True  # set first: a call that fails late (or is cancelled) may still have registered it
            try:
                yield "register", region
            except ServerUnavailableError:
                region.registered = False  # never reached the server: register again on the retry
                raise


def _give_up_unregistering(region: Region, exc: ClientError, deadline: float) -> bool:
    """After a failed unregister: keep trying while Triton still holds the region, else warn and give up."""
    if _in_use(exc) and time.monotonic() < deadline:
        return False
    # The region is unlinked locally anyway; say what the server may still hold.
    warnings.warn(f"could not unregister shared-memory region {region.name}: {exc}", stacklevel=3)
    return True


# ---- sync -----------------------------------------------------------------------------------------------------


class SyncTransport:
    """tritonclient.http or tritonclient.grpc. Thread-safe: the HTTP client (not thread-safe itself) is created
    once per thread; the gRPC client is shared."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.protocol = _Protocol(connection)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        if connection.protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self.module = module

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            c = self.connection
            if c.protocol == "http":
                client = self.module.InferenceServerClient(c.url, connection_timeout=c.timeout_s,
                                                           network_timeout=c.timeout_s)
            else:
                with self._lock:
                    client = self._clients[0] if self._clients else None
                if client is None:
                    client = self.module.InferenceServerClient(c.url, **self.protocol.grpc_client_args())
            with self._lock:
                if client not in self._clients:
                    self._clients.append(client)
            self._local.client = client
        return client

    def _guard(self, model: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ClientError:
            raise
        except Exception as exc:  # tritonclient, gRPC, gevent and socket errors alike
            raise translate(exc, url=self.connection.url, model=model) from exc

    def server_ready(self) -> bool:
        return self._guard("", lambda: self._client().is_server_ready(**self.protocol.kw()))

    def model_ready(self, model: str) -> bool:
        return self._guard(model, lambda: self._client().is_model_ready(model, **self.protocol.kw()))

    def call(self, call: Call, slot: Slot | None = None) -> Any:
        client = self._client()
        if call.kind == "metadata":
            return self._guard(call.model, lambda: client.get_model_metadata(call.model, **self.protocol.json_kw()))
        if call.kind == "config":
            try:
                return client.get_model_config(call.model, **self.protocol.json_kw(admin=True))
            except Exception as exc:
                if is_restricted(exc):
                    return None
                raise translate(exc, url=self.connection.url, model=call.model) from exc
        request = _Request(self.module, call, slot)
        if slot is not None:
            steps = _shm_steps(slot, request)
            for action, region in steps:
                if action == "unregister":
                    self.unregister(region)
                    continue
                try:
                    self._guard(call.model, functools.partial(client.register_system_shared_memory, region.name,
                                                              region.key, region.size, **self.protocol.kw()))
                except ServerUnavailableError as exc:
                    steps.throw(exc)
            request.bind()
        result = self._guard(call.model, lambda: client.infer(call.model, request.inputs,
                                                              outputs=request.output_objects(), **self.protocol.kw()))
        return request.answer(result)

    def unregister(self, region: Region) -> None:
        """Best effort: the region is unlinked locally either way."""
        if not region.registered:
            return
        deadline = time.monotonic() + IN_USE_WAIT_S
        unregister = functools.partial(self._guard, "", lambda: self._client().unregister_system_shared_memory(
            region.name, **self.protocol.kw()))
        while True:
            try:
                with_retry(unregister, UNREGISTER_RETRY)
                break
            except ClientError as exc:
                if _give_up_unregistering(region, exc, deadline):
                    break
                time.sleep(IN_USE_POLL_S)
        region.registered = False

    def shm_status(self) -> list[str]:
        return _region_names(self._guard("", lambda: self._client().get_system_shared_memory_status(
            **self.protocol.json_kw())))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
                pass


def _region_names(status: Any) -> list[str]:
    if isinstance(status, dict):  # gRPC as JSON: {"regions": {name: {...}}}
        return sorted(status.get("regions", {}))
    if isinstance(status, list):  # HTTP: [{"name": ...}]
        return sorted(r["name"] for r in status)
    return sorted(getattr(status, "regions", {}) or {})


def drive_sync(steps: Generator[Call, Any, Any], transport: SyncTransport, retry: RetryPolicy,
               slot: Slot | None = None) -> Any:
    """Run a step generator: each yielded ``Call`` is answered (with retries) and sent back, or its error thrown."""
    try:
        call = next(steps)
        while True:
            try:
                result = with_retry(functools.partial(transport.call, call, slot), retry)
            except ClientError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        return done.value


def with_retry(fn: Callable[[], Any], retry: RetryPolicy) -> Any:
    for delay in [*retry.delays(), None]:
        try:
            return fn()
        except ServerUnavailableError:
            if delay is None:
                raise
            time.sleep(delay)


def wait_ready(transport: SyncTransport, model: str, timeout_s: float) -> None:
    """Poll until the model is ready; an unknown model fails at once, an unreachable server after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay, last_error = 0.1, None
    while True:
        try:
            if transport.model_ready(model):
                return
            if transport.server_ready():
                transport.call(Call("metadata", model))  # raises ModelNotFoundError for an unknown model
            last_error = None
        except ServerUnavailableError as exc:
            last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 1.0)
    raise _not_ready(transport.connection, model, timeout_s, last_error)


def _not_ready(connection: Connection, model: str, timeout_s: float, error: ClientError | None) -> ClientError:
    if error is not None:
        return ServerUnavailableError(f"no Triton server ready at {connection.url} within {timeout_s:g} s "
                                      f"({connection.protocol}): {error.message}",
                                      hint="check --url/--protocol and that the server runs; raise --ready-timeout")
    return ModelNotFoundError(f"model '{model}' at {connection.url} did not become ready within {timeout_s:g} s",
                              hint="check the server log, or raise --ready-timeout")


# ---- asyncio --------------------------------------------------------------------------------------------------


class AsyncTransport:
    """tritonclient.http.aio (aiohttp) or tritonclient.grpc.aio; one client shared by all tasks of a loop."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.protocol = _Protocol(connection)
        c = connection
        if c.protocol == "http":
            import tritonclient.http.aio as module
            self.client = module.InferenceServerClient(c.url, conn_timeout=c.timeout_s)
        else:
            import tritonclient.grpc.aio as module
            self.client = module.InferenceServerClient(c.url, **self.protocol.grpc_client_args())
        self.module = module

    async def _guard(self, model: str, awaitable: Any) -> Any:
        try:
            if self.connection.protocol == "http":  # aiohttp's total timeout covers a call; keep the same bound
                return await asyncio.wait_for(awaitable, self.connection.timeout_s)
            return await awaitable
        except ClientError:
            raise
        except Exception as exc:
            raise translate(exc, url=self.connection.url, model=model) from exc

    async def server_ready(self) -> bool:
        return await self._guard("", self.client.is_server_ready(**self.protocol.kw()))

    async def model_ready(self, model: str) -> bool:
        return await self._guard(model, self.client.is_model_ready(model, **self.protocol.kw()))

    async def call(self, call: Call, slot: Slot | None = None) -> Any:
        if call.kind == "metadata":
            return await self._guard(call.model, self.client.get_model_metadata(call.model, **self.protocol.json_kw()))
        if call.kind == "config":
            try:
                return await self.client.get_model_config(call.model, **self.protocol.json_kw(admin=True))
            except Exception as exc:
                if is_restricted(exc):
                    return None
                raise translate(exc, url=self.connection.url, model=call.model) from exc
        request = _Request(self.module, call, slot)
        if slot is not None:
            steps = _shm_steps(slot, request)
            for action, region in steps:
                if action == "unregister":
                    await self.unregister(region)
                    continue
                try:
                    await self._guard(call.model, self.client.register_system_shared_memory(
                        region.name, region.key, region.size, **self.protocol.kw()))
                except ServerUnavailableError as exc:
                    steps.throw(exc)
            request.bind()
        result = await self._guard(call.model, self.client.infer(call.model, request.inputs,
                                                                 outputs=request.output_objects(),
                                                                 **self.protocol.kw()))
        return request.answer(result)

    async def unregister(self, region: Region) -> None:
        if not region.registered:
            return
        deadline = time.monotonic() + IN_USE_WAIT_S
        while True:
            try:
                await with_retry_async(lambda: self._guard("", self.client.unregister_system_shared_memory(
                    region.name, **self.protocol.kw())), UNREGISTER_RETRY)
                break
            except ClientError as exc:
                if _give_up_unregistering(region, exc, deadline):
                    break
                await asyncio.sleep(IN_USE_POLL_S)
        region.registered = False

    async def shm_status(self) -> list[str]:
        return _region_names(await self._guard("", self.client.get_system_shared_memory_status(
            **self.protocol.json_kw())))

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # noqa: BLE001
            pass


async def drive_async(steps: Generator[Call, Any, Any], transport: AsyncTransport, retry: RetryPolicy,
                      slot: Slot | None = None) -> Any:
    """``drive_sync`` for asyncio. The first step (reading files, encoding or decoding images) runs in a worker
    thread so the event loop is not blocked by it."""
    first = await asyncio.to_thread(_first_step, steps)
    if not isinstance(first, Call):
        return first.value
    call = first
    try:
        while True:
            try:
                result = await with_retry_async(functools.partial(transport.call, call, slot), retry)
            except ClientError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        return done.value


def _first_step(steps: Generator[Call, Any, Any]) -> Any:
    try:
        return next(steps)
    except StopIteration as done:  # a StopIteration cannot cross a Future: hand it over as a value instead
        return done


async def with_retry_async(fn: Callable[[], Any], retry: RetryPolicy) -> Any:
    for delay in [*retry.delays(), None]:
        try:
            return await fn()
        except ServerUnavailableError:
            if delay is None:
                raise
            await asyncio.sleep(delay)


async def wait_ready_async(transport: AsyncTransport, model: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    delay, last_error = 0.1, None
    while True:
        try:
            if await transport.model_ready(model):
                return
            if await transport.server_ready():
                await transport.call(Call("metadata", model))
            last_error = None
        except ServerUnavailableError as exc:
            last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 1.0)
    raise _not_ready(transport.connection, model, timeout_s, last_error)
