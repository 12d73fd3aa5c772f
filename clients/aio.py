"""``AsyncImageClassifier``: the ``ImageClassifier`` API as coroutines, on ``tritonclient.http.aio`` (aiohttp) or
``tritonclient.grpc.aio``.

    async with AsyncImageClassifier("127.0.0.1:8001", protocol="grpc", model="digits") as client:
        predictions = await client.classify(["a.png", "b.jpg"])

It connects (waits for readiness, discovers the model) on ``async with`` or on the first call. Batches run as
tasks, at most ``concurrency`` at a time; file reading and client-side decoding run in worker threads so the event
loop stays responsive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .batches import client_batch, server_batch
from .classifier import ClassifierOptions, batch_size_for, check_top_k, split
from .discovery import EnsemblePlan, LocalPlan, discover_ensemble, discover_local
from .errors import ClassificationError
from .inputs import ImageLike, Item, as_items
from .results import Outcome, Prediction
from .shm import ShmPool
from .transport import AsyncTransport


class AsyncImageClassifier:
    """Same arguments and behaviour as ``ImageClassifier``; every method is a coroutine."""

    def __init__(self, url: str, **arguments: Any) -> None:
        """``url`` is HOST:PORT; the keyword arguments are ``ClassifierOptions.from_arguments``'s."""
        self.options = ClassifierOptions.from_arguments(url, **arguments)
        self._transport: AsyncTransport | None = None
        self._connecting: asyncio.Lock | None = None
        self.plan: EnsemblePlan | None = None
        self.local: LocalPlan | None = None

    async def connect(self) -> AsyncImageClassifier:
        """Wait until the model is ready and learn how to call it; safe to call more than once."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.plan is not None:
                return self
            options = self.options
            self._transport = self._transport or AsyncTransport(options.connection)
            try:
                await self._transport.wait_ready(options.model, options.ready_timeout_s, options.retry)
                plan = await self._transport.drive(discover_ensemble(options.model, options.max_batch_size),
                                                   options.retry)
                if options.preprocess == "client":
                    self.local = await self._transport.drive(discover_local(options.model, options.transform,
                                                                            plan.max_batch_size, options.model_version),
                                                             options.retry)
                self.plan = plan
            except BaseException:
                await self.close()
                raise
        return self

    @property
    def top_k(self) -> int:
        return self._plan().top_k

    async def classify(self, images: ImageLike | Iterable[ImageLike], top_k: int | None = None,
                       batch_size: int | None = None) -> list[Prediction]:
        """One ``Prediction`` per image, in input order; raises ``ClassificationError`` if any image failed."""
        outcomes = await self.classify_many(images, top_k, batch_size)
        if any(o.error is not None for o in outcomes):
            raise ClassificationError(outcomes)
        return [o.prediction for o in outcomes]  # type: ignore[misc]

    async def classify_many(self, images: ImageLike | Iterable[ImageLike], top_k: int | None = None,
                            batch_size: int | None = None) -> list[Outcome]:
        """One ``Outcome`` per image (a prediction or that image's error), in input order."""
        await self.connect()
        plan, transport = self._plan(), self._transport
        assert transport is not None
        k = check_top_k(top_k, plan)
        items = as_items(images)
        pool = ShmPool() if self.options.shared_memory else None
        slots: asyncio.Queue = asyncio.Queue()
        for _ in range(self.options.concurrency):
            slots.put_nowait(pool.slot() if pool else None)

        async def run(batch: list[Item]) -> list[Outcome]:
            slot = await slots.get()  # at most `concurrency` batches in flight, each with its own regions
            try:
                steps = client_batch(batch, plan, self.local, k) if self.local else server_batch(batch, plan, k)
                return await transport.drive(steps, self.options.retry, slot)
            finally:
                slots.put_nowait(slot)

        tasks = [asyncio.ensure_future(run(batch)) for batch in split(items, batch_size_for(batch_size, plan))]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # nothing may still use a region
            if pool is not None:
                for region in pool.regions():
                    try:
                        await transport.unregister(region)
                    finally:
                        region.destroy()
        return [outcome for batch in results for outcome in batch]

    async def shared_memory_regions(self) -> list[str]:
        await self.connect()
        assert self._transport is not None
        return await self._transport.shm_status()

    async def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()
        self.plan = None

    async def __aenter__(self) -> AsyncImageClassifier:
        return await self.connect()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def _plan(self) -> EnsemblePlan:
        if self.plan is None:
            raise RuntimeError("not connected: use 'async with' or await connect() first")
        return self.plan
