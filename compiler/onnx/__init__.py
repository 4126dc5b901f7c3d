"""crisp.onnx: ONNX in and out — load/save, the prunable weights of a graph, import to fx, the compact export, ``optimize_onnx``."""
