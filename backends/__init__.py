"""crisp.backends: executable targets that a lowered graph compiles to, registered by name.

Importing the package registers the built-in targets: ``reference``, ``cpu``, ``onnx`` and ``crisp-stc``.
"""

from crisp.backends.registry import BackendInput, BackendOutput, get_backend, register_backend, registered_backends
from crisp.backends import cpu, onnx_backend, reference, stc_backend  # noqa: F401  (each registers its target)

__all__ = ["BackendInput", "BackendOutput", "get_backend", "register_backend", "registered_backends"]
