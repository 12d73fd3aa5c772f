"""Liveness by inference: one tiny real request through the ensemble, from inside the server container.

Triton's /v2/health/live only says the process answers HTTP. When a python-backend stub dies, Triton (2.51 at
least) stays live while every request fails with "Stub process ... is not healthy", so the kubelet never restarts
the pod. This probe classifies a 2x2 black image instead and fails, with one line saying why, unless the ensemble
answers 200 with outputs.

The image is a plain (ASCII) PGM, so it travels as an ordinary JSON string: in Triton's JSON protocol a BYTES
element is the string's own bytes. The preprocess model decodes it with Pillow like any other upload. The request
carries the parameter "tooling" (Triton passes an ensemble request's parameters on to its steps), so the
preprocess and postprocess models answer it without counting it in their prediction and image metrics: a probe
every few seconds is not traffic. Standard library only: the NGC tritonserver image has python3 but no curl.

    python3 -I liveness_inference.py --port 8000 --model digits --timeout 9 [--key-header triton-admin-key]

--key-header is for releases that restrict the inference API: the header then carries $TRITON_ADMIN_KEY.
Exit status 0 when the ensemble answered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

# A 2x2 black image in plain PGM: magic, width and height, maximum value, pixels.
PROBE_IMAGE = "P2\n2 2\n255\n0 0 0 0\n"


def fail(reason: str) -> int:
    print(f"liveness: {reason}", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail unless the ensemble classifies a tiny image.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", required=True, help="the ensemble clients call")
    parser.add_argument("--timeout", type=float, default=9.0, help="seconds for connecting and for each read")
    parser.add_argument("--key-header", default="", help="send $TRITON_ADMIN_KEY in this header")
    args = parser.parse_args(argv)

    body = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [PROBE_IMAGE]}],
                       "parameters": {"tooling": "liveness"}})  # answered, not counted as a prediction
    # A fresh connection per probe, closed after the answer: an idle keep-alive connection would hold Triton's
    # graceful shutdown for its whole exit timeout.
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if args.key_header:
        headers[args.key_header] = os.environ.get("TRITON_ADMIN_KEY", "")
    path = f"/v2/models/{urllib.parse.quote(args.model, safe='')}/infer"
    where = f"{args.host}:{args.port}"
    started = time.monotonic()
    connection = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
    try:
        connection.request("POST", path, body=body.encode(), headers=headers)
        response = connection.getresponse()
        payload = response.read()
    except TimeoutError:
        return fail(f"{args.model} on {where} did not answer within {args.timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return fail(f"cannot reach {args.model} on {where}: {type(exc).__name__}: {exc}")
    finally:
        connection.close()
    elapsed_ms = (time.monotonic() - started) * 1000

    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if response.status != 200:
        detail = answer.get("error") if isinstance(answer, dict) else payload[:200].decode(errors="replace")
        return fail(f"{args.model} answered HTTP {response.status}: {' '.join(str(detail).split())}")
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not outputs or not all(isinstance(o, dict) and o.get("data") for o in outputs):
        return fail(f"{args.model} answered HTTP 200 without output data: {payload[:200]!r}")
    names = ", ".join(sorted(str(o.get("name")) for o in outputs))
    print(f"liveness: OK, {args.model} classified a 2x2 image in {elapsed_ms:.0f} ms ({names})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
