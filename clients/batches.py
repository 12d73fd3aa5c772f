"""One batch of images -> one ``Outcome`` per image, for both preprocessing modes.

Server mode sends encoded images to the ensemble. When the server rejects a request because of some of its images
(INVALID_ARGUMENT, "image N of the request: ..."), those images get their error and the rest are sent again, so one
bad file never sinks its neighbours. A rejection that names no image splits the request into single images.

Client mode decodes and normalises here with the model's own ``ImageTransform``, sends the tensor to the classifier
and applies the same softmax/top-k and labels (``triton_deploy.postprocessing``) as the server's postprocess model.

Generators that yield ``Call``s (see ``drive`` of the transports in ``transport.py``): the same code for sync and asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from triton_deploy.postprocessing import classify, label_lookup

from .discovery import Call, EnsemblePlan, LocalPlan
from .errors import ImageError, InferenceError
from .inputs import Item, encoded, pixels
from .results import Outcome, predictions

_REJECTED = re.compile(r"image (\d+) of the request: (.*?)(?=; image \d+ of the request: |$)", re.S)


def rejected_images(message: str, count: int) -> dict[int, str]:
    """Which images of a request the server named as bad, with its reason for each."""
    found = {int(m.group(1)): m.group(2).strip() for m in _REJECTED.finditer(message)}
    return {i: reason for i, reason in found.items() if 0 <= i < count}


def server_batch(items: Sequence[Item], plan: EnsemblePlan, k: int) -> Generator[Call, Any, list[Outcome]]:
    outcomes: list[Outcome] = []
    pending: list[tuple[Item, bytes]] = []
    for item in items:
        try:
            pending.append((item, encoded(item)))
        except ImageError as exc:
            outcomes.append(Outcome(item.index, item.source, error=exc))
    outcomes += yield from _send_encoded(pending, plan, k)
    return sorted(outcomes, key=lambda o: o.index)


def _send_encoded(pending: list[tuple[Item, bytes]], plan: EnsemblePlan,
                  k: int) -> Generator[Call, Any, list[Outcome]]:
    outcomes: list[Outcome] = []
    while pending:
        array = np.empty(len(pending), dtype=np.object_)
        array[:] = [data for _item, data in pending]
        array = array.reshape(len(pending), *([1] * len(plan.image_input.dims)))
        try:
            answer = yield Call("infer", plan.model, {plan.image_input.name: ("BYTES", array)},
                                (plan.class_ids, plan.scores, plan.labels))
        except InferenceError as exc:
            if getattr(exc, "status", "") != "INVALID_ARGUMENT":
                raise
            message = getattr(exc, "server_message", exc.message)
            bad = rejected_images(message, len(pending))
            if not bad and len(pending) == 1:
                bad = {0: message}
            if not bad:  # the server did not say which image: let each one fail or succeed alone
                for one in pending:
                    outcomes += yield from _send_encoded([one], plan, k)
                return outcomes
            for i, reason in bad.items():
                item = pending[i][0]
                outcomes.append(Outcome(item.index, item.source, error=ImageError(item.source, reason,
                                                                                  index=item.index)))
            pending = [p for i, p in enumerate(pending) if i not in bad]
            continue
        sources = [item.source for item, _data in pending]
        found = predictions(sources, answer[plan.class_ids.name], answer[plan.scores.name],
                            answer[plan.labels.name], k)
        outcomes += [Outcome(item.index, item.source, prediction=p) for (item, _d), p in zip(pending, found, strict=True)]
        pending = []
    return outcomes


def client_batch(items: Sequence[Item], plan: EnsemblePlan, local: LocalPlan,
                 k: int) -> Generator[Call, Any, list[Outcome]]:
    outcomes: list[Outcome] = []
    arrays, decoded = [], []
    for item in items:
        try:
            arrays.append(pixels(item, local.transform))
            decoded.append(item)
        except ImageError as exc:
            outcomes.append(Outcome(item.index, item.source, error=exc))
    if decoded:
        tensor = local.transform.normalise(np.stack(arrays)).astype(local.input.numpy_dtype, copy=False)
        answer = yield Call("infer", local.classifier, {local.input.name: (local.input.dtype, tensor)},
                            (local.output,), version=local.version)
        # The server's postprocess model computes top-k with its own k; so do we, then cut to the caller's k.
        ids, scores = classify(answer[local.output.name], plan.top_k, logits=local.logits)
        names = label_lookup(local.labels)[ids]
        found = predictions([item.source for item in decoded], ids, scores, names, k)
        outcomes += [Outcome(item.index, item.source, prediction=p) for item, p in zip(decoded, found, strict=True)]
    return sorted(outcomes, key=lambda o: o.index)
