"""crisp.onnx: ONNX in and out — load/save (io), the prunable weights of a graph (weights), import to fx
(op_table, to_fx) and the class-aware saliency on it (saliency), the compact format (compact) and the
model surgery that writes it (write), and ``optimize_onnx`` with its report (optimize, report)."""
