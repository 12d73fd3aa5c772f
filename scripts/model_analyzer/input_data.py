"""Write perf_analyzer's ``--input-data`` file for a digits-style ensemble: the same PNG images the project's load
driver sends (``load_pool``), one per request, as perf_analyzer wants a BYTES element: base64 of the 4-byte
little-endian length followed by the bytes.

Usage: python scripts/model_analyzer/input_data.py OUTPUT.json [--input IMAGE] [--count 64]
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
from pathlib import Path

from triton_deploy.loadtests.payloads import PoolOptions, load_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--input", default="IMAGE", help="the ensemble's BYTES input (default IMAGE)")
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    pool = load_pool(PoolOptions(count=args.count))
    data = [{args.input: {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode()}}
            for image in pool.batch(args.count)]
    args.output.write_text(json.dumps({"data": data}), encoding="utf-8")


if __name__ == "__main__":
    main()
