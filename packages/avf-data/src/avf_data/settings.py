"""Typed configs for every avf command: dataclasses filled from YAML and ``--set a.b=v``.

One mechanism for avf-data and avf-train (lingua's ``args.py`` is the model): a config is a
tree of dataclasses with defaults; a YAML file and dotted overrides only name what changes;
values are converted to each field's declared type by one rule, and every problem is a
:class:`ConfigError` that names the field, so CLIs print it as one line.

The rule: a ``--set`` value is parsed as YAML (``true``, ``3``, ``0.5``, ``[1, 2]``, ``null``),
then both YAML and ``--set`` values go through :func:`coerce`: ints are accepted for floats,
integral floats for ints, lists for tuples, and text like ``1e-4`` for floats (YAML 1.1 reads
it as text); booleans must be YAML booleans (``true``/``false``; PyYAML also reads ``yes``/``no``
and ``on``/``off`` so), never ``1`` or ``"true"``, so a typo never silently flips a switch.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value, key or file is wrong; the message names it."""


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9})


def parse_size(value: int | float | str, where: str = "size") -> int:
    """A size in bytes from ``536870912``, ``"512MB"``, ``"0.5 GiB"`` (decimal and binary units)."""
    if isinstance(value, bool):
        raise ConfigError(f"config key '{where}' expects a size such as 512MB, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        number_text, unit = digits, text[len(digits) :]
        try:
            number = float(number_text)
        except ValueError:
            raise ConfigError(f"config key '{where}' expects a size such as 512MB, got {value!r}") from None
    if unit not in _UNITS or number <= 0:
        raise ConfigError(f"config key '{where}' expects a positive size such as 512MB, got {value!r}")
    return int(number * _UNITS[unit])


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` converted to the declared ``annotation`` of field ``where``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{where}' expects {_name(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{where}' must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' expects a list, got {value!r}")
        kinds = [args[0]] * len(value) if args and (origin is list or args[-1] is Ellipsis) else list(args)
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"config key '{where}' expects {len(args)} values, got {list(value)!r}")
        items = [coerce(v, k, where) for v, k in zip(value, kinds, strict=True)] if kinds else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' expects a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' expects true or false, got {value!r}")
        return value
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"config key '{where}' expects an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 as text, not as a number
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' expects a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on (stage modes) as false/true
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' expects text, got {value!r}")
        return value
    return value


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def update[C](cfg: C, values: dict[str, Any], prefix: str = "") -> C:
    """Set fields of dataclass ``cfg`` (in place, recursively) from a nested dict."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'; valid keys: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            update(current, value if value is not None else {}, prefix=f"{where}.")
        else:
            setattr(cfg, key, coerce(value, hints[key], where))
    return cfg


def parse_set(assignment: str) -> dict[str, Any]:
    """``"a.b=v"`` -> ``{"a": {"b": v}}`` with ``v`` parsed as YAML."""
    import yaml

    path, sep, raw = assignment.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set {assignment!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    parts = path.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dict ``base`` updated by ``extra`` (sections merged, values replaced)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a dict; unreadable files and syntax errors are ConfigErrors."""
    import yaml

    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except IsADirectoryError:
        raise ConfigError(f"--config {name!r} is a folder, not a YAML file") from None
    except FileNotFoundError:
        raise ConfigError(f"--config {name!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {name!r} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--config {name!r}: YAML syntax error{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {name!r}: the top level must be a mapping of sections, not a {type(data).__name__}"
        )
    return data


def gather(
    path: str | os.PathLike | None = None, sets: list[str] | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The nested dict of a YAML file, then ``--set`` assignments, then dotted ``overrides``."""
    data = read_yaml(path) if path is not None else {}
    for s in sets or []:
        data = merge(data, parse_set(s))
    for dotted, value in (overrides or {}).items():
        nested: dict[str, Any] = {}
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        data = merge(data, nested)
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists), for YAML and checkpoints."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(cfg)
