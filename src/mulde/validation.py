"""Type checks of settings read from JSON, with messages that name the setting."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any

import numpy as np

__all__ = ["check_field_types", "check_known_keys", "check_value_type"]


CONFIG_ADVICE = "fix it in the configuration file"


def check_known_keys(section: str, keys, valid) -> None:
    """Raise ValueError naming the keys of ``section`` that are not in ``valid``.

    One message for every part of the configuration, with the valid keys in
    their declared order.
    """
    valid = list(valid)
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown {section} key(s) {', '.join(map(str, unknown))}; valid keys: "
            f"{', '.join(valid)}."
        )


def check_field_types(instance: Any, section: str = "") -> None:
    """Raise ValueError for a dataclass field whose value has the wrong type.

    Settings from a JSON file arrive as whatever the file holds, for example
    ``"16"`` for a count. This check names the setting, instead of letting a
    comparison fail later with a TypeError. Integers pass where a float is
    expected, and booleans never pass as numbers.
    """
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        check_value_type(f"{section}{item.name}", value, hints[item.name])


def check_value_type(
    name: str, value: Any, hint: Any, advice: str | None = CONFIG_ADVICE
) -> None:
    """Raise ValueError when ``value`` does not match the type hint ``hint``.

    ``advice`` ends the message after a semicolon; None ends it after the types.
    """
    if not _matches(value, hint):
        # The type of a list does not show which of its items is wrong.
        found = (
            "" if isinstance(value, (list, tuple)) else f", not {type(value).__name__}"
        )
        ending = f"; {advice}." if advice else "."
        raise ValueError(f"{name}={value!r} must be {_describe(hint)}{found}{ending}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        arguments = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (
            all(_matches(item, arguments[0]) for item in value) if arguments else True
        )
    if origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        # A nested section may still be the dict it was read as.
        return isinstance(value, (hint, dict))
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (tuple, list):
        arguments = [a for a in typing.get_args(hint) if a is not Ellipsis]
        plural = {bool: "flags", int: "integers", float: "numbers", str: "strings"}
        return (
            f"a list of {plural.get(arguments[0], 'values') if arguments else 'values'}"
        )
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }
    if hint in names:
        return names[hint]
    if origin is dict:
        return "a JSON object"
    return getattr(hint, "__name__", str(hint))
