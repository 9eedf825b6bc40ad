"""Inference: audio windows, prediction, evaluation of a checkpoint, ONNX export."""
