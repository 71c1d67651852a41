"""Registry of selection methods: every module in this package defining a Policy subclass adds one.

Adding a method is adding one file here with a subclass that sets `name`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from core.budget import Budget
from core.policies.base import LayerView, Policy


class UnknownPolicyError(ValueError):
    """A policy name that no module registers."""


@functools.cache
def registry() -> dict[str, type[Policy]]:
    """Name -> class for every policy module (discovered lazily: policies may import core.models)."""
    found: dict[str, type[Policy]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            is_policy = isinstance(obj, type) and issubclass(obj, Policy) and obj is not Policy
            if is_policy and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return found


ORDER = ("dense", "oracle", "tokenbutler", "h2o", "snapkv", "quest", "streaming", "random")


def policy_names() -> list[str]:
    """Registered names, in the order the page and tables show them."""
    return sorted(registry(), key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def make_policy(name: str, **options: Any) -> Policy:
    """Build a fresh policy by name; options go to its constructor (sinks, recent, seed, ...)."""
    if name not in registry():
        raise UnknownPolicyError(f"Unknown policy {name!r}; choose one of: {', '.join(policy_names())}.")
    return registry()[name](**options)


def __getattr__(attr: str) -> Any:
    """`REGISTRY` stays importable as a name while discovery runs on first use."""
    if attr == "REGISTRY":
        return registry()
    raise AttributeError(attr)


__all__ = ["REGISTRY", "Budget", "LayerView", "Policy", "UnknownPolicyError", "make_policy", "policy_names"]
