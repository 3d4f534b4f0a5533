"""Backend registry: one table name → module; modules import their library lazily.

Only this table knows the concrete backends. ``get_backend(name)`` imports the module and returns
the class (``BackendUnavailable`` with the pip command when its library is missing);
``available_backends()`` lists each with whether it can run here and why not.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, InputError
from .backends.base import Backend

BACKEND_MODULES: dict[str, str] = {
    "onnxruntime": "anomedge.runtime.backends.onnxruntime",
    "openvino": "anomedge.runtime.backends.openvino",
    "tensorrt": "anomedge.runtime.backends.tensorrt",
    "torch": "anomedge.runtime.backends.torch_ref",
    "triton": "anomedge.runtime.backends.triton",  # a remote Triton server (anomedge[triton])
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; raises BackendUnavailable if its library is missing."""
    if name not in BACKEND_MODULES:
        raise InputError(f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_MODULES)}")
    try:
        module = importlib.import_module(BACKEND_MODULES[name])
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(f"backend '{name}' needs the module '{exc.name}' which is not installed") from exc
    backend_cls = module.BACKEND
    backend_cls.check_available()
    return backend_cls


def available_backends() -> list[tuple[str, bool, str]]:
    """[(name, available, reason-if-not)] for every registered backend."""
    rows = []
    for name in BACKEND_MODULES:
        try:
            get_backend(name)
            rows.append((name, True, ""))
        except BackendUnavailable as exc:
            rows.append((name, False, str(exc)))
    return rows
