"""``ImageClassifier``: classify images with a Triton-served classifier, over HTTP or gRPC, from ordinary code.

    with ImageClassifier("127.0.0.1:8001", protocol="grpc", model="digits") as client:
        for prediction in client.classify(["a.png", "b.jpg"], top_k=3):
            print(prediction.source, prediction.label, prediction.score)

On construction it waits for the model to be ready and reads everything else from the server (see
``discovery.py``). Inputs are split into requests of at most the model's max batch size and sent ``concurrency`` at a
time; results come back in input order. ``classify`` raises ``ClassificationError`` if any image failed (it carries
all outcomes); ``classify_many``/``iter_outcomes`` return an ``Outcome`` per image instead.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from triton_deploy.errors import Problem, raise_problems
from triton_deploy.preprocessing import ImageTransform

from .batches import client_batch, server_batch
from .discovery import EnsemblePlan, LocalPlan, discover_ensemble, discover_labels, discover_local
from .errors import ClassificationError, InvalidInputError
from .inputs import ImageLike, Item, as_items
from .results import Outcome, Prediction
from .shm import ShmPool, Slot
from .tls import TlsOptions
from .transport import Connection, RetryPolicy, SyncTransport

PREPROCESS_MODES = ("server", "client")


@dataclass(frozen=True)
class ClassifierOptions:
    """Everything a classifier client is configured with; shared by the sync and asyncio clients."""

    url: str
    protocol: str = "http"
    model: str = "digits"
    preprocess: str = "server"
    transform: ImageTransform | None = None
    max_batch_size: int | None = None
    concurrency: int = 4
    shared_memory: bool = False
    timeout_s: float = 60.0
    ready_timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.2
    headers: Mapping[str, str] = field(default_factory=dict)
    admin_key: str | None = None
    tls: TlsOptions | None = None  # None: plaintext; TlsOptions(ca=, cert=, key=): gRPC TLS, or HTTPS to a gateway
    model_version: str = ""  # a classifier version, called directly: needs preprocess="client"

    def problems(self) -> list[Problem]:
        """Every problem with these options and their connection (url, protocol, timeout), without raising."""
        problems: list[Problem] = []
        if self.preprocess not in PREPROCESS_MODES:
            problems.append((f"preprocess must be 'server' or 'client', not {self.preprocess!r}", "--preprocess"))
        if self.concurrency < 1:
            problems.append((f"concurrency must be at least 1, not {self.concurrency}", "--concurrency"))
        if self.retries < 0:
            problems.append((f"retries must be 0 or more, not {self.retries}", "--retries"))
        if self.model_version and self.preprocess != "client":
            problems.append(("a model version is called with preprocess='client': an ensemble always runs its "
                             "classifier's latest version", "preprocess='client' / --preprocess client"))
        return problems + self.connection.problems()

    def check(self) -> None:
        """The TLS files first (one ``UsageError``, as for the ``--tls-*`` flags), then one ``InvalidInputError``
        naming every other problem."""
        if self.tls is not None:
            self.tls.check()
        raise_problems(self.problems(), InvalidInputError)

    @classmethod
    def from_arguments(cls, url: str, *, protocol: str = "http", model: str = "digits", preprocess: str = "server",
                       transform: ImageTransform | None = None, max_batch_size: int | None = None,
                       concurrency: int = 4, shared_memory: bool = False, timeout: float = 60.0,
                       ready_timeout: float = 30.0, retries: int = 3, backoff: float = 0.2,
                       headers: Mapping[str, str] | None = None, admin_key: str | None = None,
                       tls: TlsOptions | None = None, model_version: str = "") -> ClassifierOptions:
        """The keyword arguments both ``ImageClassifier`` and ``AsyncImageClassifier`` take, in one place; checked,
        so a client refuses unusable arguments before it connects."""
        options = cls(url, protocol, model, preprocess, transform, max_batch_size, concurrency, shared_memory, timeout,
                      ready_timeout, retries, backoff, dict(headers or {}), admin_key, tls, str(model_version or ""))
        options.check()
        return options

    @property
    def connection(self) -> Connection:
        return Connection(self.url, self.protocol, self.timeout_s, dict(self.headers), self.admin_key, self.tls)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, backoff_s=self.backoff_s)


def check_top_k(top_k: int | None, plan: EnsemblePlan) -> int:
    if top_k is None:
        return plan.top_k
    if not 1 <= top_k <= plan.top_k:
        raise InvalidInputError(f"top_k must be between 1 and {plan.top_k} (what '{plan.model}' returns), not "
                                f"{top_k}", hint="--top-k")
    return top_k


def batch_size_for(batch_size: int | None, plan: EnsemblePlan) -> int:
    """Images per request: the model's max batch size unless the caller asks for another size. A size above the
    server's limit is sent as asked, and the server's refusal is reported as ``RequestTooLargeError``."""
    if batch_size is None:
        return plan.max_batch_size
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, not {batch_size}", hint="--batch-size")
    return batch_size


def split(items: list[Item], size: int) -> list[list[Item]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


class ImageClassifier:
    """A synchronous classifier client (``tritonclient.http`` or ``tritonclient.grpc``); see the module docstring.

    Without ``admin_key`` the model configuration is not readable and requests hold at most ``max_batch_size``
    images (default 8); with it, the server's own max batch size is used (and caps ``max_batch_size``).
    ``preprocess="client"`` decodes and normalises here and needs ``admin_key`` (to read the preprocessing
    parameters) or ``transform=``. ``shared_memory=True`` moves tensors through system shared memory: only for a
    client on the server's host.
    """

    def __init__(self, url: str, **arguments: Any) -> None:
        """``url`` is HOST:PORT; the keyword arguments are ``ClassifierOptions.from_arguments``'s."""
        self.options = options = ClassifierOptions.from_arguments(url, **arguments)
        self._transport = SyncTransport(options.connection)
        self._labels: tuple[str, ...] | None = None
        self._executor = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="triton-classify")
        try:
            self._transport.wait_ready(options.model, options.ready_timeout_s, options.retry)
            self.plan: EnsemblePlan = self._transport.drive(discover_ensemble(options.model, options.max_batch_size),
                                                            options.retry)
            self.local: LocalPlan | None = None
            if options.preprocess == "client":
                self.local = self._transport.drive(discover_local(options.model, options.transform,
                                                                  self.plan.max_batch_size, options.model_version),
                                                   options.retry)
        except BaseException:
            self.close()
            raise

    # ---- public API ------------------------------------------------------------------------------------------

    @property
    def top_k(self) -> int:
        """How many ranked answers the model returns per image (the most ``classify`` can give)."""
        return self.plan.top_k

    @property
    def max_batch_size(self) -> int:
        return self.plan.max_batch_size

    def labels(self) -> tuple[str, ...]:
        """The model's labels in class order, asked of its ``<model>_postprocess`` model (no admin key needed)."""
        if self._labels is None:
            self._labels = self._transport.drive(discover_labels(self.options.model, self.plan.max_batch_size),
                                                 self.options.retry)
        return self._labels

    def classify(self, images: ImageLike | Iterable[ImageLike], top_k: int | None = None,
                 batch_size: int | None = None) -> list[Prediction]:
        """One ``Prediction`` per image, in input order; raises ``ClassificationError`` if any image failed."""
        outcomes = self.classify_many(images, top_k, batch_size)
        if any(o.error is not None for o in outcomes):
            raise ClassificationError(outcomes)
        return [o.prediction for o in outcomes]  # type: ignore[misc]

    def classify_many(self, images: ImageLike | Iterable[ImageLike], top_k: int | None = None,
                      batch_size: int | None = None) -> list[Outcome]:
        """One ``Outcome`` per image (a prediction or that image's error), in input order."""
        return list(self.iter_outcomes(images, top_k, batch_size))

    def iter_outcomes(self, images: ImageLike | Iterable[ImageLike], top_k: int | None = None,
                      batch_size: int | None = None) -> Iterator[Outcome]:
        """Outcomes in input order as they arrive, with at most ``concurrency`` requests in flight."""
        k = check_top_k(top_k, self.plan)
        items = as_items(images)
        size = batch_size_for(batch_size, self.plan)
        pool = ShmPool() if self.options.shared_memory else None
        slots: dict[int, Slot] = {}
        lock = threading.Lock()

        def run(batch: list[Item]) -> list[Outcome]:
            slot = None
            if pool is not None:
                with lock:
                    slot = slots.setdefault(threading.get_ident(), pool.slot())
            steps = client_batch(batch, self.plan, self.local, k) if self.local else server_batch(batch, self.plan, k)
            start = time.perf_counter()
            outcomes = self._transport.drive(steps, self.options.retry, slot)
            took = time.perf_counter() - start
            return [dataclasses.replace(o, request_s=took) for o in outcomes]

        window: collections.deque[Future] = collections.deque()
        batches = iter(split(items, size))
        try:
            for batch in batches:
                window.append(self._executor.submit(run, batch))
                if len(window) >= 2 * self.options.concurrency:
                    break
            while window:
                outcomes = window.popleft().result()
                following = next(batches, None)
                if following is not None:
                    window.append(self._executor.submit(run, following))
                yield from outcomes
        finally:
            for future in window:
                future.cancel()
            for future in window:
                if not future.cancelled():
                    future.exception()  # wait: no request may still use a region we are about to remove
            if pool is not None:
                self._release(pool)

    def shared_memory_regions(self) -> list[str]:
        """Names of the system shared-memory regions registered on the server (by anyone)."""
        return self._transport.shm_status()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._transport.close()

    def __enter__(self) -> ImageClassifier:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------------------------

    def _release(self, pool: ShmPool) -> None:
        """Unregister and unlink every region of a run, whatever happened during it."""
        for region in pool.regions():
            try:
                self._transport.unregister(region)
            finally:
                region.destroy()
