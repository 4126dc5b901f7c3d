"""crisp.backends: executable targets that a lowered graph compiles to, registered by name."""

from crisp.backends.registry import BackendInput, BackendOutput, get_backend, register_backend, registered_backends

__all__ = ["BackendInput", "BackendOutput", "get_backend", "register_backend", "registered_backends"]
