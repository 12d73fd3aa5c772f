"""triton-deploy: export Keras image classifiers to ONNX and serve them on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
