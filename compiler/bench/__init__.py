"""crisp.bench: the benchmark harness behind ``crisp bench``, ``crisp simulate`` and ``benchmarks/`` (peers, workloads, timing)."""
