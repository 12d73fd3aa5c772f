"""TensorFlow -> ONNX with tf2onnx, with stable tensor names and one dynamic batch dimension called ``batch``.

The model is traced through a ``tf.function`` whose input signature names the input and which returns a dict naming
the output: that path works for functional and Sequential Keras 3 models and for SavedModel signatures alike
(``from_keras`` fails on some Keras 3 models). tf2onnx names the batch dimension ``unk__N``; we rename it.

The function is frozen here, and tf2onnx converts the frozen graph: ``tf2onnx.convert.from_function`` lists every
non-variable tensor the function captures as a graph input, so a model holding plain constants (EfficientNet's
``Normalization`` layer keeps its mean and variance as tensors, not variables) came out with three inputs.
"""

from __future__ import annotations

import logging
import os

import onnx

from triton_deploy.errors import ConversionError

from .sources import LoadedModel

BATCH_DIM = "batch"


def convert(model: LoadedModel, *, input_name: str, output_name: str, opset: int, nchw: bool) -> onnx.ModelProto:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    height, width, channels = model.input_shape
    signature = (tf.TensorSpec((None, height, width, channels), tf.float32, name=input_name),)

    @tf.function(input_signature=signature)
    def serving(image):
        return {output_name: tf.identity(model.call(image))}

    options = {"inputs_as_nchw": [f"{input_name}:0"]} if nchw else {}
    try:
        frozen = convert_variables_to_constants_v2(serving.get_concrete_function(), lower_control_flow=False,
                                                   aggressive_inlining=True)  # what tf2onnx's own loader does
        graph_input, graph_output = frozen.inputs[0].name, frozen.outputs[0].name
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(add_shapes=True), input_names=[graph_input], output_names=[graph_output],
            tensors_to_rename={graph_input: input_name, graph_output: output_name}, opset=opset, **options)
    except Exception as exc:
        raise ConversionError(f"tf2onnx could not convert the model at opset {opset}: {exc}",
                              hint="try another --opset") from None
    proto.producer_name = "triton-deploy (tf2onnx)"
    name_batch_dimension(proto)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [input_name] or outputs != [output_name]:
        raise ConversionError(f"converted graph has inputs {inputs} and outputs {outputs}; "
                              f"expected [{input_name!r}] and [{output_name!r}]")
    return proto


def name_batch_dimension(proto: onnx.ModelProto, name: str = BATCH_DIM) -> None:
    """Give the leading dimension of every graph input, output and value_info the symbolic name ``name``."""
    graph = proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = name
