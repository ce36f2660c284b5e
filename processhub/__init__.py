"""processhub: cluster-wide singleton processes for Django (Horde.Process for Python).

    from processhub import HordeProcess
"""
import importlib.metadata
from typing import Any

__all__ = ["HordeProcess", "ProcessRef", "__version__"]

try:
    __version__ = importlib.metadata.version("processhub")
except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed (the demo, the test-suite)
    __version__ = "0.2.0.dev0"  # keep equal to pyproject.toml's version


def __getattr__(name: str) -> Any:
    # Lazy, so that importing processhub does not import Django models before setup.
    if name == "HordeProcess":
        from .process import HordeProcess

        return HordeProcess
    if name == "ProcessRef":
        from .client import ProcessRef

        return ProcessRef
    raise AttributeError(name)
