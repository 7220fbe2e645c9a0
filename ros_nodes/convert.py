"""Our message dataclasses (`messages.*`) as another library's classes for the same ROS types.

The core builds cyclonedds structs; the rclpy transport publishes rclpy's generated classes,
which have the same field names. One recursive walk converts any message; the target side
says, per field, which class a nested message has (`resolve`) and what a plain value must look
like (`plain`). For rclpy both are read off the generated classes themselves
(`get_fields_and_field_types()`), so this module imports no ROS library.
"""

from __future__ import annotations

import array
import dataclasses
import importlib
import re
from collections.abc import Callable
from typing import Any

Resolve = Callable[[type, str], type]
Plain = Callable[[type, str, Any], Any]


def _unchanged(cls: type, name: str, value: Any) -> Any:
    return value


def to_message(obj: Any, target_cls: type, resolve: Resolve, plain: Plain = _unchanged) -> Any:
    """`obj` (a message dataclass) as a `target_cls` built from keyword arguments, field by field.

    `resolve(cls, name)`: the class of the nested message in field `name` of `cls` (the element
    class for a sequence or array of messages). `plain(cls, name, value)`: any other value as
    that field wants it.
    """
    values = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if _is_message(value):
            value = to_message(value, resolve(target_cls, field.name), resolve, plain)
        elif isinstance(value, list) and value and _is_message(value[0]):
            element = resolve(target_cls, field.name)
            value = [to_message(item, element, resolve, plain) for item in value]
        else:
            value = plain(target_cls, field.name, value)
        values[field.name] = value
    return target_cls(**values)


def _is_message(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


# rosidl_generator_py (rclpy's classes) spells field types 'std_msgs/Header', 'octet',
# 'sequence<vision_msgs/Detection2D>', 'sequence<uint8, 16>', 'double[36]', 'string<=8'.
_ROSIDL_TYPE = re.compile(r"(?P<sequence>sequence<)?(?P<base>[\w/]+)[^\[]*(?P<array>\[\d+\])?$")
_FLOATS = {"float", "double"}
_INTEGERS = {f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}


def _rosidl_field(cls: type, name: str) -> tuple[str, bool, bool]:
    """(element type, is a sequence, is a fixed-size array) of field `name` of an rclpy class."""
    match = _ROSIDL_TYPE.match(cls.get_fields_and_field_types()[name])
    return match["base"], bool(match["sequence"]), bool(match["array"])


def rosidl_resolve(cls: type, name: str) -> type:
    """The rclpy class of a nested message field: 'pkg/Type' is `pkg.msg.Type`."""
    package, _, type_name = _rosidl_field(cls, name)[0].partition("/")
    return getattr(importlib.import_module(f"{package}.msg"), type_name)


def rosidl_plain(cls: type, name: str, value: Any) -> Any:
    """A plain value as rclpy's setter for field `name` accepts it.

    rclpy checks types strictly: a `byte` is `bytes` of length 1 (we hold it as an int), a
    double must be a float, not an int or a numpy scalar. A `uint8[]` payload goes in as
    `array.array('B')`, which the setter takes as is instead of checking every byte.
    """
    base, sequence, fixed = _rosidl_field(cls, name)
    many = sequence or fixed
    if base == "octet":
        return [bytes((item,)) for item in value] if many else bytes((value,))
    if base == "uint8" and sequence and isinstance(value, bytes | bytearray | memoryview):
        return array.array("B", value)
    for kinds, cast in ((_FLOATS, float), (_INTEGERS, int)):
        if base in kinds:
            return [cast(item) for item in value] if many else cast(value)
    return value
