"""Typed YAML files (training recipes, rollout plans): a file, then values, then ``key=value``
overrides, validated by one pydantic model, with errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from nicheloop.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def _coerce(text: str) -> Any:
    """A CLI override value as YAML would read it (numbers, booleans, lists, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_yaml_model(
    model: type[M],
    path: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
    *,
    what: str,
    examples: str,
) -> M:
    """Read ``path`` (YAML mapping; none: the defaults), apply ``values`` then ``key=value``
    ``overrides`` (values parsed as YAML), and validate as ``model``. ``what`` names the kind of
    file in errors (``training recipe``), ``examples`` where to find some (``recipes/``).

    Raises:
        InvalidInput: on a missing or malformed file, an unknown key or a value out of range.
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise InvalidInput(f"{what} {path} does not exist; see {examples} for examples")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{what} {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{what} {path} must be a mapping of settings, not {type(data).__name__}")
    data.update(values or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"override {item!r}: write key=value, e.g. epochs=10")
        data[key.strip().replace("-", "_")] = _coerce(value)
    try:
        return model(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"bad {what}: {problems}") from exc


def dump_yaml_model(value: BaseModel) -> str:
    """``value`` as YAML that :func:`load_yaml_model` reads back."""
    return yaml.safe_dump(value.model_dump(mode="json"), sort_keys=False)
