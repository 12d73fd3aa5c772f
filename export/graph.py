"""Facts about a model's graph that the serving configuration and the optimiser need.

``count_multiply_adds``: the multiply-adds of a Keras model's convolutions and dense layers for one image (the
manifest's compute figure, and how much pruning or a smaller student saves).

``largest_activation_bytes``: the biggest intermediate tensor one image makes. ONNX Runtime on CPU slows down once a
call's activations outgrow the caches (measured on MobileNetV2-224, 2-core EPYC: 3.4 ms of CPU per image at batch 1,
4.2 at batch 8, 4.5 at batch 16), so the repository generator uses this figure to split large dynamic batches into
cache-sized ONNX Runtime calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def largest_activation_bytes(path: Path) -> int | None:
    """Bytes of the largest non-weight tensor per image (batch dimension left out), from ONNX shape inference.

    None when no intermediate tensor has a fully known per-image shape (nothing to go on)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    largest = None
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.name in weights or not info.type.HasField("tensor_type"):
            continue
        tensor = info.type.tensor_type
        dims = list(tensor.shape.dim)
        # Per image: drop the leading batch dimension (symbolic or unknown, or the 1 of a fixed-batch graph).
        per_image = dims[1:] if dims and dims[0].dim_value in (0, 1) else dims
        if not per_image or any(not d.dim_value for d in per_image):
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        except (KeyError, TypeError):
            continue
        size = int(np.prod([d.dim_value for d in per_image])) * itemsize
        largest = size if largest is None else max(largest, size)
    return largest


def count_multiply_adds(model) -> int:
    """Multiply-adds of the Conv2D, DepthwiseConv2D and Dense layers for one image: the bulk of the compute
    (FLOPs = 2x this)."""
    import keras  # late: reading an ONNX graph must not load TensorFlow

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c_out * kh * kw * layer.input.shape[-1] // getattr(layer, "groups", 1)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):  # one kh x kw filter per output channel
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c_out * kh * kw
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)
