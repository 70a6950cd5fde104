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

from loadctl.protocol.messages import MESSAGE_TYPES, OPAQUE, PROTOCOL_VERSION, Message, Snapshot

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


def _container(tp: Any) -> type:
    """The builtin container an opaque field must be (list for `list[Any]`)."""
    kind = typing.get_origin(tp) or tp
    if kind not in (list, dict):
        raise TypeError(f"an opaque field is a list or a dict, not {tp!r}")
    return kind  # type: ignore[no-any-return]


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
            # The receiver validates every field (histogram tables, checked by
            # decode_tables before any merge); walking them here too would double the
            # cost of the coordinator's hottest path. Only the container is checked.
            return _exact(_container(args[0]))
        return _converter_for(args[0])
    if origin is dict:
        return _mapping(_converter_for(args[0]), _converter_for(args[1]))
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional(_converter_for(rest[0]))
    raise TypeError(f"no wire converter for {tp!r}")  # a programming error, at import


class _Fallback(Exception):
    """Internal: the fast decoder met something it does not take; the checked
    converters decide, and say what is wrong and where."""


_FALLBACK = _Fallback()
_INLINE_CHECKS = {int: "int", str: "str", bytes: "bytes", bool: "bool"}


def _fast_record(cls: type, made: dict[type, _Converter]) -> _Converter:
    """`_record(cls)` for well-formed input, generated as one function with the field
    checks inline (the coordinator decodes thousands of snapshots a second).

    Wherever `_record` would fail it raises _Fallback or _Invalid instead, so the
    caller reruns `_record` for the error and its path; it returns exactly what
    `_record` returns otherwise. Types it has no inline check for go through
    their checked converter. A message with fewer fields (defaults) falls back."""
    if cls in made:
        return made[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    names = [f"v{i}" for i in range(len(fields))]
    ns: dict[str, Any] = {"_F": _FALLBACK, "_cls": cls}
    body = [
        "def fast(value):",
        f"    if type(value) is not list or len(value) != {len(fields)}:",
        "        raise _F",
        f"    {', '.join(names)}, = value",
    ]
    for i, f in enumerate(fields):
        body += _fast_field(hints[f.name], f"v{i}", ns, made)
    body += _construct(cls, fields, ns)
    exec("\n".join(body), ns)  # generated from the message classes only, at import
    fast: _Converter = ns["fast"]
    made[cls] = fast
    return fast


def _construct(
    cls: type, fields: tuple[dataclasses.Field[Any], ...], ns: dict[str, Any]
) -> list[str]:
    """Lines that return the instance made of v0, v1, ... . A frozen dataclass's
    __init__ sets each field through object.__setattr__ (2.5 µs for a Series, ten of
    them per snapshot); one without __post_init__ whose fields are slots is made
    the same way with the slots' own setters (0.8 µs)."""
    slots = [cls.__dict__.get(f.name) for f in fields]
    if hasattr(cls, "__post_init__") or not all(
        isinstance(slot, types.MemberDescriptorType) for slot in slots
    ):
        return [f"    return _cls({', '.join(f'v{i}' for i in range(len(fields)))})"]
    ns["_new"] = object.__new__
    lines = ["    o = _new(_cls)"]
    for i, slot in enumerate(slots):
        ns[f"_s{i}"] = slot.__set__  # type: ignore[union-attr]
        lines.append(f"    _s{i}(o, v{i})")
    return [*lines, "    return o"]


def _fast_field(tp: Any, v: str, ns: dict[str, Any], made: dict[type, _Converter]) -> list[str]:
    """Lines that check and convert the variable `v` of type `tp` in place."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        if OPAQUE in args[1:]:
            return [f"    if type({v}) is not {_container(args[0]).__name__}:", "        raise _F"]
        return _fast_field(args[0], v, ns, made)
    if tp in _INLINE_CHECKS:
        return [f"    if type({v}) is not {_INLINE_CHECKS[tp]}:", "        raise _F"]
    if tp is float:
        return [
            f"    if type({v}) is not float:",
            f"        if type({v}) is not int:",
            "            raise _F",
            f"        {v} = float({v})",
        ]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        ns[f"_r_{v}"] = _fast_record(tp, made)
        return [f"    {v} = _r_{v}({v})"]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if dataclasses.is_dataclass(item) and isinstance(item, type):
            ns[f"_r_{v}"] = _fast_record(item, made)
            return [
                f"    if type({v}) is not list:",
                "        raise _F",
                f"    {v} = tuple([_r_{v}(e) for e in {v}])",
            ]
        if item in _INLINE_CHECKS:
            return [
                f"    if type({v}) is not list:",
                "        raise _F",
                f"    for e in {v}:",
                f"        if type(e) is not {_INLINE_CHECKS[item]}:",
                "            raise _F",
                f"    {v} = tuple({v})",
            ]
    if origin is dict and args[0] in _INLINE_CHECKS and args[1] in _INLINE_CHECKS:
        # msgpack made the map just now: checked, it is what _mapping would rebuild
        return [
            f"    if type({v}) is not dict:",
            "        raise _F",
            f"    for k, e in {v}.items():",
            f"        if type(k) is not {_INLINE_CHECKS[args[0]]} "
            f"or type(e) is not {_INLINE_CHECKS[args[1]]}:",
            "            raise _F",
        ]
    ns[f"_c_{v}"] = _converter_for(tp)  # raises _Invalid: the caller falls back
    return [f"    {v} = _c_{v}({v})"]


_PLAIN = (int, float, str, bytes, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _to_plain(value: Any) -> Any:
    """Dataclasses become field lists, recursively; everything else msgpack knows."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return [_to_plain(getattr(value, name)) for name in names]
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _fast_plain(
    cls: type, made: dict[type, Callable[[Any], list[Any]]]
) -> Callable[[Any], list[Any]]:
    """`_to_plain` for an instance of the message class `cls`, generated as one function:
    fields msgpack takes as they are (numbers, text, bytes, tuples of those, maps of
    those, histogram wire forms) are not walked; records are converted by their own
    generated function; anything else (Any, optional, free-form) goes to `_to_plain`."""
    if cls in made:
        return made[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    ns: dict[str, Any] = {"_to_plain": _to_plain}
    parts = []
    for i, f in enumerate(dataclasses.fields(cls)):
        tp = hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        value = f"m.{f.name}"
        if (
            tp in _INLINE_CHECKS
            or tp is float
            or (origin is typing.Annotated and OPAQUE in args[1:])
        ):
            parts.append(value)
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
            ns[f"_p{i}"] = _fast_plain(tp, made)
            parts.append(f"_p{i}({value})")
        elif (
            origin in (Union, types.UnionType)
            and len(args) == 2
            and type(None) in args
            and dataclasses.is_dataclass(record := next(a for a in args if a is not type(None)))
            and isinstance(record, type)
        ):  # an optional record (a PlanUpdate's Share: a thousand weights, not walked)
            ns[f"_p{i}"] = _fast_plain(record, made)
            parts.append(f"(None if {value} is None else _p{i}({value}))")
        elif (
            origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _INLINE_CHECKS
        ):
            parts.append(value)
        elif (
            origin is tuple
            and len(args) == 2
            and args[1] is Ellipsis
            and dataclasses.is_dataclass(args[0])
            and isinstance(args[0], type)
        ):
            ns[f"_p{i}"] = _fast_plain(args[0], made)
            parts.append(f"[_p{i}(x) for x in {value}]")
        elif origin is dict and args[0] in _INLINE_CHECKS and args[1] in _INLINE_CHECKS:
            parts.append(value)
        else:
            parts.append(f"_to_plain({value})")
    exec(f"def plain(m):\n    return [{', '.join(parts)}]", ns)  # from the classes, at import
    plain: Callable[[Any], list[Any]] = ns["plain"]
    made[cls] = plain
    return plain


_PLAIN_MADE: dict[type, Callable[[Any], list[Any]]] = {}
_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    cls: _fast_plain(cls, _PLAIN_MADE) for cls in MESSAGE_TYPES
}
_DECODERS: dict[int, _Converter] = {cls.TYPE: _record(cls) for cls in MESSAGE_TYPES}
_FAST_MADE: dict[type, _Converter] = {}
_FAST: dict[int, _Converter] = {cls.TYPE: _fast_record(cls, _FAST_MADE) for cls in MESSAGE_TYPES}
_NAMES: dict[int, str] = {cls.TYPE: cls.__name__ for cls in MESSAGE_TYPES}
assert len(_DECODERS) == len(MESSAGE_TYPES), "two message classes share a TYPE"


def encode(message: Message) -> bytes:
    plain: Callable[[Any], Any] = _ENCODERS.get(type(message), _to_plain)  # same lists, faster
    payload = [PROTOCOL_VERSION, message.TYPE, plain(message)]
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
        try:
            message: Message = _FAST[type_id](fields)
        except (_Fallback, _Invalid):
            message = decoder(fields)  # the checked way: the same result, or the error
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


_SNAPSHOT_FIELDS = len(dataclasses.fields(Snapshot))


def peek_snapshot(data: bytes) -> tuple[str, str, int] | None:
    """(run_id, agent_id, seq) of what looks like a Snapshot frame, read from its first
    bytes only; None for anything else. Nothing is validated beyond those three: the
    receiver acks a snapshot the moment it arrives (so a backlog does not make agents
    resend) and still decodes it completely (`decode`) before merging anything."""
    try:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_no_ext, timestamp=0)
        unpacker.feed(memoryview(data)[:512])  # run and agent ids are short
        if unpacker.read_array_header() != 3:
            return None
        version, type_id = unpacker.unpack(), unpacker.unpack()
        if type(version) is not int or version != PROTOCOL_VERSION or type(type_id) is not int:
            return None
        if type_id != Snapshot.TYPE or unpacker.read_array_header() != _SNAPSHOT_FIELDS:
            return None
        run_id, agent_id, seq = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    except Exception:  # short, garbage, or not msgpack at all: the full decode says why
        return None
    if type(run_id) is str and type(agent_id) is str and type(seq) is int:
        return run_id, agent_id, seq
    return None
