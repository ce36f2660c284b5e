"""processhub: cluster-wide singleton processes for Django (Horde.Process for Python).

    from processhub import HordeProcess
"""
from typing import Any

__all__ = ["HordeProcess", "ProcessRef"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing processhub does not import Django models before setup.
    if name == "HordeProcess":
        from .process import HordeProcess

        return HordeProcess
    if name == "ProcessRef":
        from .client import ProcessRef

        return ProcessRef
    raise AttributeError(name)
