"""`helm test` for triton-classifier: wait until Triton is ready, then classify one real PNG through the ensemble.

Standard library only, so any image with python3 runs it. Environment:
    TRITON_URLS            comma-separated base URLs of the HTTP port, e.g. http://svc.ns.svc:8000
    MODEL_NAME             the ensemble model to call
    READY_TIMEOUT_SECONDS  how long to wait for readiness (default 300)
    TOP_K                  expected length of the outputs; 0 = any length (default 0)
    GRPC_TLS_TARGETS       comma-separated host:port of gRPC ports that speak TLS ("" = gRPC is not checked)
    GRPC_TLS_DIR           folder of the mounted certificate Secret: ca.crt verifies the server (system CAs when
                           absent); with GRPC_TLS_MUTUAL=1 its tls.crt and tls.key are presented as client certificate

Why the binary-data extension: the ensemble input IMAGE is a TYPE_STRING (BYTES) tensor holding encoded image bytes.
In the KServe v2 JSON body a BYTES element is taken as the string itself and raw PNG bytes are not valid JSON; the
preprocess model would decode base64 text, but then the test would not check that raw bytes arrive intact, the way
the project's clients send them. Triton's binary tensor data extension sends the JSON header followed by the raw
tensor; `Inference-Header-Content-Length` says where the header ends, and a BYTES tensor is serialised as a 4-byte
little-endian length followed by the bytes.

The request carries the parameter "tooling", which Triton passes on to the ensemble's steps: the models answer it
without counting it in their prediction and image metrics, since a `helm test` is not traffic.
"""

from __future__ import annotations

import json
import math
import os
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib

EXPECTED_INPUT = "IMAGE"
EXPECTED_OUTPUTS = ("CLASS_IDS", "SCORES", "LABELS")


def png_of_a_one(size: int = 28) -> bytes:
    """An 8-bit greyscale PNG of a handwritten-style "1": a white stroke on black, like the digits data."""
    rows = []
    for y in range(size):
        row = bytearray(size)
        if size // 7 <= y < size - size // 7:
            for x in range(size // 2 - 2, size // 2 + 2):
                row[x] = 255
        rows.append(b"\x00" + bytes(row))  # filter type 0 (None) before each scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # width, height, depth 8, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(base: str, model: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            server, _ = http("GET", f"{base}/v2/health/ready")
            model_ready, _ = http("GET", f"{base}/v2/models/{model}/ready")
            if server == 200 and model_ready == 200:
                return
            last = f"server ready -> {server}, model ready -> {model_ready}"
        except OSError as error:  # connection refused or reset while pods start
            last = str(error)
        time.sleep(2)
    raise SystemExit(f"FAIL {base}: not ready after {timeout:.0f} s ({last})")


def infer(base: str, model: str, image: bytes) -> dict:
    status, raw = http("GET", f"{base}/v2/models/{model}")
    if status != 200:
        raise SystemExit(f"FAIL {base}: model metadata of {model} -> HTTP {status}: {raw[:300]!r}")
    metadata = json.loads(raw)
    inputs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    if EXPECTED_INPUT not in inputs or inputs[EXPECTED_INPUT]["datatype"] != "BYTES":
        raise SystemExit(f"FAIL {base}: {model} should take a BYTES input {EXPECTED_INPUT}, has {metadata['inputs']}")
    # [-1, 1] when the ensemble batches, [1] when it does not: one image either way.
    shape = [1 if dim == -1 else dim for dim in inputs[EXPECTED_INPUT]["shape"]]
    tensor = struct.pack("<I", len(image)) + image
    header = json.dumps(request_header(shape, len(tensor))).encode()
    status, raw = http("POST", f"{base}/v2/models/{model}/infer", header + tensor, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    })
    if status != 200:
        raise SystemExit(f"FAIL {base}: inference -> HTTP {status}: {raw[:500]!r}")
    return json.loads(raw)


def request_header(shape: list[int], tensor_size: int) -> dict:
    """The JSON part of the inference request. It never asks for `classification` (class_count) on an output:
    LABELS is BYTES, and Triton 2.51 dies of SIGFPE on top-k of a BYTES output (later releases refuse it)."""
    return {
        "inputs": [{"name": EXPECTED_INPUT, "datatype": "BYTES", "shape": shape,
                    "parameters": {"binary_data_size": tensor_size}}],
        "outputs": [{"name": name, "parameters": {"binary_data": False}} for name in EXPECTED_OUTPUTS],
        "parameters": {"tooling": "helm-test"},  # answered, not counted as a prediction
    }


def check_grpc_tls(target: str, tls_dir: str, mutual: bool) -> str:
    """TLS handshake with the gRPC port (server certificate checked against ca.crt and the host name), then the
    HTTP/2 connection preface: a gRPC server answers with a SETTINGS frame. Standard library only, so no gRPC call;
    a refused client certificate shows here too (TLS 1.3 servers reject it on the first read)."""
    host, _, port = target.rpartition(":")
    ca_file = os.path.join(tls_dir, "ca.crt")
    context = ssl.create_default_context(cafile=ca_file if os.path.exists(ca_file) else None)
    context.set_alpn_protocols(["h2"])
    if mutual:
        context.load_cert_chain(os.path.join(tls_dir, "tls.crt"), os.path.join(tls_dir, "tls.key"))
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=host) as conn:
            if conn.selected_alpn_protocol() != "h2":
                raise SystemExit(f"FAIL grpcs://{target}: the server did not agree on HTTP/2 (ALPN h2)")
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            frame = conn.recv(9)
            if not frame and not mutual:
                raise SystemExit(f"FAIL grpcs://{target}: the server closed the connection after the TLS handshake; "
                                 "it may require a client certificate (security.grpcTls.mutual)")
            if len(frame) < 9 or frame[3] != 4:
                raise SystemExit(f"FAIL grpcs://{target}: no HTTP/2 SETTINGS frame after the preface ({frame!r})")
            return f"{conn.version()}, certificate for {host} trusted" + (", client certificate accepted" if mutual else "")
    except (ssl.SSLError, OSError) as error:
        raise SystemExit(f"FAIL grpcs://{target}: {error}") from None


def check(response: dict, top_k: int) -> str:
    outputs = {tensor["name"]: tensor for tensor in response.get("outputs", [])}
    missing = [name for name in EXPECTED_OUTPUTS if name not in outputs]
    if missing:
        raise SystemExit(f"FAIL: outputs {missing} missing from {sorted(outputs)}")
    ids, scores, labels = (outputs[name]["data"] for name in EXPECTED_OUTPUTS)
    if not (len(ids) == len(scores) == len(labels) > 0):
        raise SystemExit(f"FAIL: output lengths differ or are empty: {len(ids)}, {len(scores)}, {len(labels)}")
    if top_k and len(ids) != top_k:
        raise SystemExit(f"FAIL: expected top-{top_k}, got {len(ids)} classes")
    if not all(isinstance(i, int) for i in ids):
        raise SystemExit(f"FAIL: CLASS_IDS are not integers: {ids}")
    if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        raise SystemExit(f"FAIL: SCORES are not finite numbers: {scores}")
    if any(a < b for a, b in zip(scores, scores[1:])):
        raise SystemExit(f"FAIL: SCORES are not sorted best first: {scores}")
    return ", ".join(f"{label} ({class_id}) {score:.3f}" for class_id, score, label in zip(ids, scores, labels))


def main() -> int:
    urls = [url.strip().rstrip("/") for url in os.environ["TRITON_URLS"].split(",") if url.strip()]
    model = os.environ["MODEL_NAME"]
    timeout = float(os.environ.get("READY_TIMEOUT_SECONDS", "300"))
    top_k = int(os.environ.get("TOP_K", "0"))
    image = png_of_a_one()
    for base in urls:
        wait_ready(base, model, timeout)
        summary = check(infer(base, model, image), top_k)
        print(f"OK {base}: {model} classified a {len(image)}-byte PNG: {summary}", flush=True)
    targets = [t.strip() for t in os.environ.get("GRPC_TLS_TARGETS", "").split(",") if t.strip()]
    for target in targets:
        summary = check_grpc_tls(target, os.environ.get("GRPC_TLS_DIR", ""), os.environ.get("GRPC_TLS_MUTUAL") == "1")
        print(f"OK grpcs://{target}: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
