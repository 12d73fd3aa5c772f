"""System shared memory for a client on the server's host: request tensors are written to, and fixed-size outputs
read from, POSIX shared-memory regions registered with Triton instead of travelling over the socket.

Each concurrent request slot owns one input and one output region, reused across requests and replaced by a larger
one when a request does not fit. ``ShmPool.regions()`` lists every region ever created so the caller can unregister
and unlink all of them in a ``finally``; nothing is left in ``/dev/shm`` or in the server's registry, also on errors.
BYTES outputs (labels) have no size known in advance and come back in the response as usual.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass

import numpy as np
import tritonclient.utils.shared_memory as system_shm
from tritonclient.utils import serialize_byte_tensor

from triton_deploy.spec import TensorSpec

NAME_PREFIX = "triton_deploy_client"
ALIGN = 64  # tensors start at cache-line boundaries
MIN_REGION_BYTES = 64 * 1024


@dataclass(frozen=True)
class Placed:
    """A tensor's place in a region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class Region:
    """One POSIX shared-memory object, named ``/<name>`` (so it shows up as ``/dev/shm/<name>``)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.key, self.size = name, "/" + name, size
        self.handle = None
        self.registered = False

    def create(self) -> None:
        self.handle = system_shm.create_shared_memory_region(self.name, self.key, self.size, create_only=True)

    def destroy(self) -> None:
        """Unmap and unlink; safe to call twice."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            system_shm.destroy_shared_memory_region(handle)


class Slot:
    """The regions of one in-flight request."""

    def __init__(self, pool: ShmPool) -> None:
        self._pool = pool
        self.input: Region | None = None
        self.output: Region | None = None

    def resize(self, input_bytes: int, output_bytes: int) -> tuple[list[Region], list[Region]]:
        """Regions to drop (unregister + destroy) and to add (create + register) so a request of these sizes fits."""
        stale, fresh = [], []
        for attr, need in (("input", input_bytes), ("output", output_bytes)):
            current = getattr(self, attr)
            if current is not None and current.size >= need:
                continue
            if current is not None:
                stale.append(current)
            size = max(MIN_REGION_BYTES, _round_up(need * 2, 4096)) if need else 0
            region = self._pool.new_region(size) if size else None
            setattr(self, attr, region)
            if region is not None:
                fresh.append(region)
        return stale, fresh

    def write(self, placed: list[Placed], payloads: list[np.ndarray]) -> None:
        assert self.input is not None and self.input.handle is not None
        for where, payload in zip(placed, payloads, strict=True):
            system_shm.set_shared_memory_region(self.input.handle, [payload], offset=where.offset)

    def read(self, placed: list[Placed], specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
        assert self.output is not None and self.output.handle is not None
        result = {}
        for where in placed:
            view = system_shm.get_contents_as_numpy(self.output.handle, specs[where.name].numpy_dtype, where.shape,
                                                    offset=where.offset)
            result[where.name] = np.array(view, copy=True)  # the region is reused by the next request
            del view
        return result


class ShmPool:
    """Creates uniquely named regions and remembers them all, for one classification run."""

    def __init__(self) -> None:
        self._prefix = f"{NAME_PREFIX}_{os.getpid()}_{secrets.token_hex(4)}"
        self._counter = itertools.count()
        self._regions: list[Region] = []

    def new_region(self, size: int) -> Region:
        region = Region(f"{self._prefix}_{next(self._counter)}", size)
        self._regions.append(region)
        return region

    def slot(self) -> Slot:
        return Slot(self)

    def regions(self) -> list[Region]:
        return list(self._regions)


def place_inputs(inputs: dict[str, tuple[str, np.ndarray]]) -> tuple[list[Placed], list[np.ndarray], int]:
    """Input tensors laid out back to back; BYTES tensors in Triton's length-prefixed serialisation."""
    placed, payloads, offset = [], [], 0
    for name, (dtype, array) in inputs.items():
        payload = serialize_byte_tensor(array) if dtype == "BYTES" else np.ascontiguousarray(array)
        nbytes = len(payload.item()) if payload.dtype == np.object_ else payload.nbytes
        placed.append(Placed(name, dtype, tuple(array.shape), offset, nbytes))
        payloads.append(payload)
        offset = _round_up(offset + nbytes, ALIGN)
    return placed, payloads, offset


def place_outputs(outputs: tuple[TensorSpec, ...], batch: int) -> tuple[list[Placed], int]:
    """Fixed-size outputs laid out back to back; BYTES outputs are left out (returned in the response)."""
    placed, offset = [], 0
    for spec in outputs:
        if spec.dtype == "BYTES" or any(d < 0 for d in spec.dims):
            continue
        shape = (batch, *spec.dims)
        nbytes = int(np.prod(shape)) * np.dtype(spec.numpy_dtype).itemsize
        placed.append(Placed(spec.name, spec.dtype, shape, offset, nbytes))
        offset = _round_up(offset + nbytes, ALIGN)
    return placed, offset


def leftover_regions() -> list[str]:
    """Names in /dev/shm that this module created and nobody removed (for tests and diagnostics)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(NAME_PREFIX))
    except FileNotFoundError:
        return []


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple
