"""Copy a model repository with every python-backend step replaced by a stand-in that does no work: it answers each
request with zeros of the shapes and types its config.pbtxt declares. Same ensemble, same steps, same configs
(instances, batching, warm-up), same tensors on the wire, so serving the copy measures what the server, the hops
between python-backend steps and the client cost on their own: the floor under the real repository's latency.

Usage:
  python scripts/latency_floor.py build/tune-start build/latency-floor
  python scripts/model_analyzer/compare.py --concurrency 1 --rounds 3 real=build/tune-start floor=build/latency-floor
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

STAND_IN = '''"""Stand-in written by scripts/latency_floor.py: zeros of the configured outputs, no work."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], [int(d) for d in o["dims"]], pb_utils.triton_string_to_numpy(o["data_type"]))
                        for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().shape[0]
            tensors = [pb_utils.Tensor(name, np.full([rows, *dims], b"" if kind is np.object_ else 0, dtype=kind))
                       for name, dims, kind in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    if args.output.exists():
        sys.exit(f"{args.output} exists; remove it or choose another output folder")
    shutil.copytree(args.repository, args.output)
    replaced = []
    for config_path in sorted(args.output.glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        if config.backend != "python":
            continue
        for version in (p for p in config_path.parent.iterdir() if p.is_dir() and p.name.isdigit()):
            (version / "model.py").write_text(STAND_IN, encoding="utf-8")
        replaced.append(config.name)
    if not replaced:
        shutil.rmtree(args.output)
        sys.exit(f"{args.repository} has no python-backend model to replace")
    print(f"{args.output}: stand-ins for {', '.join(replaced)}")


if __name__ == "__main__":
    main()
