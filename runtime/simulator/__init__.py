"""crisp.runtime.simulator: replays instruction traces on accelerator models (CRISP-STC, NVIDIA-STC, DSTC, TC)."""
