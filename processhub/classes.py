"""The HordeProcess classes this OS process knows, by stable label (``app_label.ClassName``).

Only classes registered here can be started; the wire carries labels, never
import paths (DESIGN I8). A node advertises its labels in its row, so placement
never sends a process to a node that cannot run its class.
"""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .exceptions import UnknownProcessClass

# label -> HordeProcess subclass (typed loosely: this module sits below process.py, which imports it)
_classes: dict[str, type[Any]] = {}


def label_for(cls: type) -> str:
    explicit = cls.__dict__.get("label")
    if explicit:
        return explicit
    from django.apps import apps

    config = apps.get_containing_app_config(cls.__module__)
    if config is None:
        raise ImproperlyConfigured(
            f"{cls.__module__}.{cls.__qualname__} is not in an installed app; "
            "define it in an installed app's processes.py or give it a `label`."
        )
    return f"{config.label}.{cls.__name__}"


def register(cls: type[Any]) -> str:
    label = label_for(cls)
    existing = _classes.get(label)
    if existing is not None and existing is not cls and (
        existing.__module__ != cls.__module__ or existing.__qualname__ != cls.__qualname__
    ):
        raise ImproperlyConfigured(f"Two HordeProcess classes claim the label {label!r}: {existing} and {cls}")
    _classes[label] = cls
    return label


def get(label: object) -> type[Any]:
    if not isinstance(label, str) or label not in _classes:
        raise UnknownProcessClass(f"No HordeProcess class is registered under the label {label!r}")
    return _classes[label]


def registered() -> list[type[Any]]:
    """Every registered class, by label."""
    return [_classes[label] for label in sorted(_classes)]


def labels() -> list[str]:
    return sorted(_classes)


def labels_set() -> frozenset[str]:
    return frozenset(_classes)
