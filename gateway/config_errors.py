"""Settings that cannot be used, said in one line a person can act on: the file, the key (with
the closest valid key for a typo), what is wrong — never a traceback."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gateway.settings import GatewaySettings, load_settings


class ConfigError(Exception):
    """One actionable line (the CLI prints it and exits with status 2)."""


def load_checked(path: Path | None, **overrides: Any) -> GatewaySettings:
    """``load_settings``, with every way it can fail turned into a ConfigError."""
    where = str(path) if path is not None else "the settings"
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: no such settings file (give --config an existing YAML file)")
    try:
        return load_settings(path, **overrides)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc)}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def describe(error: ValidationError) -> str:
    """The first problem of ``error`` as ``key.path: what`` (and how many more there are)."""
    # An unknown key first: it usually explains a "missing" one beside it (a typo).
    problems = sorted(error.errors(), key=lambda p: p["type"] != "extra_forbidden")
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        text = f"{key}: unknown key"
        suggestion = _close_key(first["loc"])
        if suggestion:
            text += f" (did you mean '{suggestion}'?)"
    elif first["type"] == "missing":
        text = f"{key}: required, but not set"
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
        value = first.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
        text = f"{key}: {message}{shown}" if key else message
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return text


def _close_key(location: tuple[int | str, ...]) -> str | None:
    """The valid key closest to the unknown last one of ``location``, if any is close."""
    model: Any = GatewaySettings
    keyed = False
    for part in location[:-1]:
        if isinstance(part, int) or keyed:
            keyed = False  # a list index, or a key of a dict field (a route's name, say)
            continue
        field = _fields(model).get(str(part))
        if field is None:
            return None
        keyed = get_origin(field.annotation) is dict or any(
            get_origin(arg) is dict for arg in get_args(field.annotation)
        )
        model = _model_of(field.annotation)
        if model is None:
            return None
    matches = difflib.get_close_matches(str(location[-1]), list(_fields(model)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _fields(model: Any) -> dict[str, Any]:
    return dict(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model inside a field's type (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for inner in getattr(annotation, "__args__", ()):
        found = _model_of(inner)
        if found is not None:
            return found
    return None
