"""msgpack codec for the typed messages, with validation that never lets a
bad frame through half-built.

A frame is `[version, type, [field, ...]]`. `decode` either returns a fully
valid message or raises one `ProtocolError` subclass: whatever arrives on the
wire (random bytes, valid msgpack of the wrong shape, unknown types, another
protocol version, oversize frames) ends in that one exception family, so the
receiving loop needs exactly one `except`.

Validation is derived once from each dataclass's annotations: every field is
checked and converted (lists become tuples, ints become floats where a float
is declared) before the constructor is called, so handlers can trust types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import msgpack
from loadctl.protocol.messages import MESSAGE_TYPES, OPAQUE, PROTOCOL_VERSION, Message

MAX_FRAME_BYTES = 64 * 1024 * 1024


class ProtocolError(Exception):
    """Anything wrong with a frame. Subclasses say what."""


class FrameTooLarge(ProtocolError):
    pass


class MalformedFrame(ProtocolError):
    pass


class VersionMismatch(ProtocolError):
    def __init__(self, version: object) -> None:
        super().__init__(
            f"protocol version {version!r} but this side speaks {PROTOCOL_VERSION}: "
            "install the same loadctl version on the coordinator and every agent"
        )
        self.version = version


class UnknownMessageType(ProtocolError):
    pass


class InvalidMessage(ProtocolError):
    pass


_Converter = Callable[[Any], Any]


class _Invalid(Exception):
    """Internal: a field failed validation; becomes InvalidMessage with a path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def within(self, outer: str) -> _Invalid:
        """The same problem, one level up: `.series` + `[1]` + `.arrivals`."""
        return _Invalid(outer + self.path, self.problem)


def _fail(value: Any, expected: str) -> _Invalid:
    return _Invalid("", f"expected {expected}, got {type(value).__name__}")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise _fail(value, "int")
    return value


def _float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _fail(value, "float")


def _exact(kind: type) -> _Converter:
    def convert(value: Any) -> Any:
        if type(value) is not kind:
            raise _fail(value, kind.__name__)
        return value

    return convert


def _any(value: Any) -> Any:
    # msgpack turns extension type -1 into a Timestamp whatever ext_hook says;
    # typed fields reject it by type, free-form values must be walked.
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())
        elif type(item) is msgpack.Timestamp:
            raise _Invalid("", "msgpack timestamp (extension type -1) is not part of the protocol")
    return value


def _sequence(item: _Converter) -> _Converter:
    def convert(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _fail(value, "array")
        out = []
        for position, element in enumerate(value):
            try:
                out.append(item(element))
            except _Invalid as error:
                raise error.within(f"[{position}]") from None
        return tuple(out)

    return convert


def _mapping(key: _Converter, item: _Converter) -> _Converter:
    def convert(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _fail(value, "map")
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = item(v)
            except _Invalid as error:
                raise error.within(f"[{k!r}]") from None
        return out

    return convert


def _optional(inner: _Converter) -> _Converter:
    def convert(value: Any) -> Any:
        return None if value is None else inner(value)

    return convert


def _record(cls: type) -> _Converter:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls)]
    converters = [_converter_for(hints[f.name]) for f in fields]
    required = sum(
        1
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    name = cls.__name__

    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _fail(value, f"{name} fields")
        if not required <= len(value) <= len(fields):
            raise _Invalid("", f"{name} takes {required}..{len(fields)} fields, got {len(value)}")
        args = []
        for f, conv, element in zip(fields, converters, value, strict=False):
            try:
                args.append(conv(element))
            except _Invalid as error:
                raise error.within(f".{f.name}") from None
        return cls(*args)

    return convert


def _converter_for(tp: Any) -> _Converter:
    if tp is Any:
        return _any
    if tp is int:
        return _int
    if tp is float:
        return _float
    if tp in (str, bytes, bool):
        return _exact(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _record(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_converter_for(args[0]))
    if origin is typing.Annotated:
        if OPAQUE in args[1:]:
            # The receiver validates every key and value (Histogram wire forms, checked
            # by decode_wire before any merge); walking them here too would double
            # the cost of the coordinator's hottest path.
            return _exact(dict)
        return _converter_for(args[0])
    if origin is dict:
        return _mapping(_converter_for(args[0]), _converter_for(args[1]))
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional(_converter_for(rest[0]))
    raise TypeError(f"no wire converter for {tp!r}")  # a programming error, at import


def _to_plain(value: Any) -> Any:
    """Dataclasses become field lists, recursively; everything else msgpack knows."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


_DECODERS: dict[int, _Converter] = {cls.TYPE: _record(cls) for cls in MESSAGE_TYPES}
_NAMES: dict[int, str] = {cls.TYPE: cls.__name__ for cls in MESSAGE_TYPES}
assert len(_DECODERS) == len(MESSAGE_TYPES), "two message classes share a TYPE"


def encode(message: Message) -> bytes:
    payload = [PROTOCOL_VERSION, message.TYPE, _to_plain(message)]
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"{type(message).__name__} is {len(data)} bytes")
    return data


def _no_ext(code: int, data: bytes) -> Any:
    raise MalformedFrame(f"msgpack extension type {code} is not part of the protocol")


def decode(data: bytes) -> Message:
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises a zoo of types on garbage
        raise MalformedFrame(f"not a msgpack frame: {type(error).__name__}") from None
    if type(frame) is not list or len(frame) != 3:
        raise MalformedFrame("a frame is [version, type, fields]")
    version, type_id, fields = frame
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise VersionMismatch(version)
    if type(type_id) is not int:
        raise MalformedFrame("message type is not an int")
    decoder = _DECODERS.get(type_id)
    if decoder is None:
        raise UnknownMessageType(f"unknown message type {type_id}")
    try:
        message: Message = decoder(fields)
    except _Invalid as error:
        raise InvalidMessage(f"{_NAMES[type_id]}{error.path}: {error.problem}") from None
    except (TypeError, ValueError, RecursionError) as error:  # from a constructor's own checks
        raise InvalidMessage(f"{type(error).__name__}: {error}") from None
    return message


def peek_version(data: bytes) -> object:
    """The version field of a frame, if it has one; for a refusal message."""
    try:
        frame = msgpack.unpackb(data, raw=False, ext_hook=_no_ext, timestamp=0)
    except Exception:
        return None
    if type(frame) is list and frame:
        return frame[0]
    return None
