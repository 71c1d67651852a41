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


def _check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse an unregistered name, or options the policy does not have."""
    if name not in REGISTRY:
        raise UnknownPolicyError(f"Unknown policy {name!r}; choose one of: {', '.join(policy_names())}.")
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        raise UnknownPolicyError(
            f"{name} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(option_names(name))}."
        )


def make_policy(name: str, **options: Any) -> Policy:
    """Build a fresh policy by name; options are its dataclass fields (sinks, recent, window, ...)."""
    _check_options(name, options)
    return REGISTRY[name](**options)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'double-sparsity:channels=16:bits=4' -> ('double-sparsity', {'channels': 16, 'bits': 4}): a method and
    options, as the evaluation's --policies takes them (numbers become ints or floats, the rest stays text).
    Unknown names and options are refused here, before any model is loaded."""
    name, *parts = spec.split(":")
    options: dict[str, Any] = {}
    for part in parts:
        key, sep, text = part.partition("=")
        if not sep or not key or not text:
            raise UnknownPolicyError(f"{spec!r}: options are written name:option=value:option=value.")
        options[key] = _option_value(text)
    _check_options(name, options)
    return name, options


def _option_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def policy_from_spec(spec: str) -> Policy:
    """A fresh policy from a spec written as `parse_spec` reads it (a plain name: the method's defaults)."""
    name, options = parse_spec(spec)
    return make_policy(name, **options)


__all__ = ["REGISTRY", "LayerView", "Policy", "UnknownPolicyError", "make_policy", "option_names", "parse_spec",
           "policy_from_spec", "policy_names"]
