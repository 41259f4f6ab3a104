"""One YAML loader with ``key=value`` overrides for every config file WeLIP reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

_M = TypeVar("_M", bound=BaseModel)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key=value`` of ``overrides`` in ``data`` (in place) and return it.

    Keys may be dotted (``target.max_concurrency=4``) to reach into sections, which are
    created when missing; values are parsed as YAML (``limit=10`` is an int,
    ``tags=[a, b]`` a list, ``name=null`` None).

    Raises:
        ValueError: an override that is not ``key=value``, or a dotted key that passes
            through a value that is not a section.
    """
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {override!r} is not key=value")
        node = data
        *parents, leaf = key.split(".")
        for name in parents:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {override!r}: {name!r} is not a section")
            node = child
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(cls: type[_M], path: str | Path, overrides: list[str] | None = None) -> _M:
    """Read the YAML mapping at ``path``, apply ``overrides`` (:func:`apply_overrides`), validate as ``cls``.

    Example: ``load_config(SuiteConfig, "configs/eval/arithmetic.yaml", ["limit=10"])``.

    Raises:
        ValueError: the file is not a mapping, or a malformed override;
            pydantic.ValidationError: the result is not a valid ``cls``.
    """
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping")
    return cls.model_validate(apply_overrides(data, list(overrides or [])))
