"""Settings that cannot be used, said in one line a person can act on: the file, the key (with
the closest valid key for a typo), what is wrong — never a traceback."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gateway.settings import ENV_NESTED, ENV_PREFIX, GatewaySettings, load_settings

OTHER_VARIABLES = frozenset({"GATEWAY_TRITON_HOME", "GATEWAY_ADMIN_ADDRESS"})
"""GATEWAY_* variables that are no setting: the CLI's (fleet's Triton home, ctl's address)."""


class ConfigError(Exception):
    """One actionable line (the CLI prints it and exits with status 2)."""


def load_checked(path: Path | None, **overrides: Any) -> GatewaySettings:
    """``load_settings``, with every way it can fail turned into a ConfigError."""
    where = str(path) if path is not None else "the settings"
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: no such settings file (give --config an existing YAML file)")
    check_environment(os.environ)
    try:
        return load_settings(path, **overrides)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except ValidationError as exc:
        variable = _variable_setting(_first_problem(exc)["loc"], os.environ)
        source = where if variable is None else f"the environment variable {variable}"
        raise ConfigError(f"{source}: {describe(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_environment(environ: Mapping[str, str]) -> None:
    """A ConfigError for a GATEWAY_* variable that sets no settings section (a typo would
    otherwise be ignored without a word), with the closest valid name."""
    sections = {name.upper() for name in GatewaySettings.model_fields}
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        section, nested, rest = name.removeprefix(ENV_PREFIX).partition(ENV_NESTED)
        if section in sections:
            continue
        text = f"{variable}: unknown environment variable (no settings section '{section.lower()}'"
        suggestion = _close_variable(section, nested + rest, sections)
        text += f"; did you mean {suggestion}?)" if suggestion else ")"
        raise ConfigError(text)


def _close_variable(section: str, rest: str, sections: set[str]) -> str | None:
    # GATEWAY_SERVER_PORT: one underscore where two separate the section from its key.
    for index, char in enumerate(section):
        if char == "_" and section[:index] in sections:
            return f"{ENV_PREFIX}{section[:index]}{ENV_NESTED}{section[index + 1 :]}{rest}"
    matches = difflib.get_close_matches(section, sorted(sections), n=1, cutoff=0.6)
    return f"{ENV_PREFIX}{matches[0]}{rest}" if matches else None


def _variable_setting(location: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The environment variable that set the value at ``location`` (or the section holding
    it, as JSON), if one did: the environment overrides the file."""
    by_name = {variable.upper(): variable for variable in environ}
    for end in range(len(location), 0, -1):
        parts = location[:end]
        if any(isinstance(part, int) for part in parts):
            continue
        found = by_name.get(ENV_PREFIX + ENV_NESTED.join(str(part) for part in parts).upper())
        if found is not None:
            return found
    return None


def _first_problem(error: ValidationError) -> Any:
    # An unknown key first: it usually explains a "missing" one beside it (a typo).
    return sorted(error.errors(), key=lambda p: p["type"] != "extra_forbidden")[0]


def describe(error: ValidationError) -> str:
    """The first problem of ``error`` as ``key.path: what`` (and how many more there are)."""
    problems = error.errors()
    first = _first_problem(error)
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
