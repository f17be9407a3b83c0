"""Config files: one strict pydantic base and one loader for ``.toml`` / ``.json`` files.

Every problem is one line naming the file, the key as a dotted path (``selection.mode``) and what is expected:

    configs/x.toml: selection.mode = 'fats' is invalid: input should be 'fast' or 'exhaustive'
    configs/x.toml: unknown key selection.mdoe; known keys there: mode, max_layer_fraction, ...
    configs/x.toml: invalid TOML (Expected '=' after a key in a key/value pair (at line 3, column 6)); fix the syntax
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from refusal_lab.core.errors import RefusalLabError

C = TypeVar("C", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every settings model: unknown keys are errors, so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid")


def canonical_json(config: BaseModel) -> str:
    """``config`` as JSON with sorted keys and no whitespace: equal settings give equal strings (and hashes)."""
    return json.dumps(json.loads(config.model_dump_json()), sort_keys=True, separators=(",", ":"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table a ``.toml`` or ``.json`` config file holds."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise RefusalLabError(f"config file {path} {what}; pass a .toml or .json file")
    if path.suffix not in (".toml", ".json"):
        raise RefusalLabError(f"{path}: unknown config type {path.suffix or '(no extension)'!r}; use .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RefusalLabError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") \
            from None
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RefusalLabError(f"{path}: invalid TOML ({error}); fix the syntax there") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RefusalLabError(f"{path}: invalid JSON ({error.msg} at line {error.lineno}, column "
                                  f"{error.colno}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise RefusalLabError(f"{path}: a config must be a table of settings, not a JSON {type(data).__name__}")
    return data


def load_config_file(path: str | Path | None, model_cls: type[C], *, section: str | None = None,
                     ignore: Collection[str] = (), defaults: Mapping[str, Any] | None = None, **overrides) -> C:
    """``model_cls`` validated from ``path`` (``.toml``/``.json``; None: no file).

    Precedence, lowest first: ``defaults``, the file's settings, ``overrides`` that are not None (command-line
    options). ``section``: read only that table of the file (``[methods]``); ``ignore``: top-level tables that
    another loader reads. Any unknown key, wrong type or disallowed value raises one :class:`RefusalLabError`
    line naming the file (or ``--option``), the dotted key and what is allowed.
    """
    data = read_config_file(path) if path is not None else {}
    if section is not None:
        data = data.get(section, {})
        if not isinstance(data, dict):
            raise RefusalLabError(f"{path}: {section} must be a table of settings, not {data!r}")
    else:
        data = {k: v for k, v in data.items() if k not in ignore}
    given = {k: v for k, v in overrides.items() if v is not None}
    merged = {**(defaults or {}), **data}
    for key, value in given.items():  # dotted keys (``compare.n_eval``) set one setting inside a table
        *parents, leaf = key.split(".")
        node = merged
        for parent in parents:
            node[parent] = node = dict(node.get(parent) or {})
        node[leaf] = value
    try:
        return model_cls(**merged)
    except ValidationError as error:
        raise RefusalLabError(describe_error(error, model_cls, path, section, set(given))) from None


def describe_error(error: ValidationError, model_cls: type[BaseModel], path: str | Path | None,
                   section: str | None = None, options: Collection[str] = ()) -> str:
    """The first problem of ``error`` as one line: ``SOURCE: KEY = VALUE is invalid: WHAT IS EXPECTED``."""
    problem = error.errors()[0]
    loc = [str(part) for part in problem["loc"]]
    dotted = ".".join(loc)
    option = next((o for o in options if dotted == o or dotted.startswith(o + ".")), None)
    source = f"--{option.split('.')[-1].replace('_', '-')}" if option else (path or "config")
    key = ".".join(([section] if section else []) + loc)
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    if problem["type"] == "extra_forbidden":
        known = ", ".join(_fields_at(model_cls, loc[:-1]))
        return f"{source}: unknown key {key}; known keys there: {known}{more}"
    message = problem["msg"][:1].lower() + problem["msg"][1:]
    if problem["type"] == "missing":
        return f"{source}: missing key {key}; add it{more}"
    value = repr(problem["input"])
    value = value if len(value) <= 60 else value[:57] + "..."
    return f"{source}: {key} = {value} is invalid: {message}{more}"


def _fields_at(model_cls: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the (nested) model that ``loc`` points into."""
    for part in loc:
        field = model_cls.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model_cls = annotation
    return list(model_cls.model_fields)
