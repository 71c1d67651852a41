"""Registry of selection methods: every module in this package defining a Policy subclass adds one.

Adding a method is adding one file here with a subclass that sets `name` (docs/adding-a-method.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields
from typing import Any

from core.policies.base import LayerView, Policy


class UnknownPolicyError(ValueError):
    """A policy name that no module registers, or an option that a policy does not have."""


def _discover() -> dict[str, type[Policy]]:
    """Name -> class for every Policy subclass defined in a module of this package."""
    found: dict[str, type[Policy]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            is_policy = isinstance(obj, type) and issubclass(obj, Policy) and obj is not Policy
            if is_policy and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return found


REGISTRY: dict[str, type[Policy]] = _discover()
ORDER = ("dense", "oracle", "tokenbutler", "h2o", "snapkv", "quest", "streaming", "random")


def policy_names() -> list[str]:
    """Registered names, in the order the page and tables show them."""
    return sorted(REGISTRY, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def option_names(name: str) -> list[str]:
    """The options (dataclass fields) a policy accepts."""
    return [f.name for f in fields(REGISTRY[name]) if f.init]


def make_policy(name: str, **options: Any) -> Policy:
    """Build a fresh policy by name; options are its dataclass fields (sinks, recent, window, ...)."""
    if name not in REGISTRY:
        raise UnknownPolicyError(f"Unknown policy {name!r}; choose one of: {', '.join(policy_names())}.")
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        raise UnknownPolicyError(
            f"{name} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(option_names(name))}."
        )
    return REGISTRY[name](**options)


__all__ = ["REGISTRY", "LayerView", "Policy", "UnknownPolicyError", "make_policy", "option_names", "policy_names"]
