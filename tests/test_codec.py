"""The msgpack codec: every message round-trips with its declared types, and
whatever else arrives (garbage, wrong shapes, other versions, oversize or
hostile frames) ends in a ProtocolError subclass, never a half-built message.

Message strategies are derived from the dataclass annotations, so a field
added to a message is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loadctl.protocol import messages
from loadctl.protocol.codec import (
    MAX_FRAME_BYTES,
    FrameTooLarge,
    InvalidMessage,
    MalformedFrame,
    ProtocolError,
    UnknownMessageType,
    VersionMismatch,
    decode,
    encode,
    peek_version,
)
from loadctl.protocol.histogram import HistogramWireError
from loadctl.protocol.histogram_table import decode_tables
from loadctl.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Bye,
    Done,
    Plan,
    PlanUpdate,
    Series,
    Share,
    Snapshot,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PER_CLASS = settings(SETTINGS, max_examples=10)  # x 15 message classes

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1

# -- strategies ---------------------------------------------------------------

# What msgpack carries in a free-form (`Any`) field: lists, never tuples; text
# map keys (strict_map_key allows only str/bytes); no NaN so == can compare.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
plain_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)

# Anything msgpack can pack, including what the protocol forbids: extension
# types, timestamps, non-text map keys.
any_packable = st.recursive(
    scalars
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=4) | st.integers(-5, 5) | st.binary(max_size=4), inner, max_size=4
        )
    ),
    max_leaves=8,
)


def _is_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return None


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if tp is Any:
        return plain_values
    if tp is int:
        return st.integers(INT64_MIN, UINT64_MAX)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=30)
    if tp is bytes:
        return st.binary(max_size=30)
    if tp is bool:
        return st.booleans()
    if tp is Share:  # a Share validates itself: only well-formed ones can be built
        return (
            st.lists(st.integers(0, 5), min_size=1, max_size=6)
            .filter(sum)
            .flatmap(
                lambda w: st.builds(
                    Share, st.floats(0, 1e9), st.just(tuple(w)), st.integers(0, len(w) - 1)
                )
            )
        )
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(tp)}
        return st.builds(tp, **fields)
    inner = _is_optional(tp)
    if inner is not None:
        return st.none() | strategy_for(inner)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    raise AssertionError(f"no test strategy for {tp!r}: extend strategy_for")


# -- an independent check that a decoded value has its declared types ---------


def assert_plain(value: Any) -> None:
    """Free-form data: only what msgpack itself yields, no tuples or extension objects."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return
    if type(value) is list:
        for v in value:
            assert_plain(v)
        return
    if type(value) is dict:
        for k, v in value.items():
            assert type(k) in (str, bytes), k
            assert_plain(v)
        return
    raise AssertionError(f"{type(value).__name__} in a free-form field: {value!r}")


def assert_typed(value: Any, tp: Any) -> None:
    if tp is Any:
        assert_plain(value)
    elif tp in (int, float, str, bytes, bool):
        assert type(value) is tp, f"{value!r} is not {tp.__name__}"
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        assert type(value) is tp
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            assert_typed(getattr(value, f.name), hints[f.name])
    elif _is_optional(tp) is not None:
        if value is not None:
            assert_typed(value, _is_optional(tp))
    elif typing.get_origin(tp) is tuple:
        assert type(value) is tuple, f"{value!r} is not a tuple"
        for v in value:
            assert_typed(v, typing.get_args(tp)[0])
    elif typing.get_origin(tp) is list:
        assert type(value) is list, f"{value!r} is not a list"
        for v in value:
            assert_typed(v, typing.get_args(tp)[0])
    elif typing.get_origin(tp) is dict:
        assert type(value) is dict
        key_type, value_type = typing.get_args(tp)
        for k, v in value.items():
            assert_typed(k, key_type)
            assert_typed(v, value_type)
    else:
        raise AssertionError(f"unchecked type {tp!r}")


def decode_or_protocol_error(data: bytes) -> messages.Message | None:
    """decode() must return a fully typed message or raise a ProtocolError; nothing else."""
    try:
        message = decode(data)
    except ProtocolError:
        return None
    assert type(message) in MESSAGE_TYPES
    assert_typed(message, type(message))
    return message


def plain(value: Any) -> Any:
    """A message as the wire's plain data, built independently of the codec."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [plain(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def frame(version: Any, type_id: Any, fields: Any) -> bytes:
    data: bytes = msgpack.packb([version, type_id, fields], use_bin_type=True, datetime=False)
    return data


def sample(cls: type[Any]) -> Any:
    """One hand-written valid instance of each message, for the error tests."""
    hints = typing.get_type_hints(cls)
    simple = {int: 3, float: 1.5, str: "x", bytes: b"y", bool: True}
    args = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if tp in simple:
            args.append(simple[tp])
        elif tp is Share or _is_optional(tp) is Share:
            args.append(Share(2, (1, 2), 1))
        elif f.default is not dataclasses.MISSING:
            args.append(f.default)
        elif typing.get_origin(tp) is tuple:
            args.append(())
        elif typing.get_origin(tp) is list:
            args.append([])
        else:
            assert typing.get_origin(tp) is dict, tp
            args.append({})
    return cls(*args)


ALL = pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)

# -- round trip ---------------------------------------------------------------


def test_message_types_are_distinct_and_complete() -> None:
    assert len({cls.TYPE for cls in MESSAGE_TYPES}) == len(MESSAGE_TYPES)
    assert set(MESSAGE_TYPES) == set(typing.get_args(messages.Message))


@ALL
@PER_CLASS
@given(data=st.data())
def test_round_trip_every_message(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(strategy_for(cls))
    wire = encode(message)
    back = decode(wire)
    assert back == message
    assert type(back) is cls
    assert_typed(back, cls)
    assert encode(back) == wire


@ALL
def test_round_trip_sample(cls: type[Any]) -> None:
    message = sample(cls)
    assert decode(encode(message)) == message


@SETTINGS
@given(data=st.data())
def test_ints_on_the_wire_become_floats_and_arrays_tuples(data: st.DataObject) -> None:
    """A float field sent as an int (msgpack packs 2.0 as 2 in other encoders)
    decodes to float; arrays decode to tuples, also nested."""
    seqs = data.draw(st.lists(st.integers(0, 2**32), max_size=5))
    start, end, cpu = data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=3, max_size=3))
    series = Series("p", "get", 1, {"ok": 1})
    snap = plain(Snapshot("r", "a", 1, 2, 0.0, 0.0, (series, series), [], 3, 4, 0.0, 5))
    snap[4], snap[5], snap[10] = start, end, cpu
    back = decode(frame(PROTOCOL_VERSION, Snapshot.TYPE, snap))
    assert isinstance(back, Snapshot)
    assert (back.start, back.end, back.cpu_percent) == (float(start), float(end), float(cpu))
    assert_typed(back, Snapshot)
    ack = decode(frame(PROTOCOL_VERSION, messages.Ack.TYPE, ["r", seqs]))
    assert isinstance(ack, messages.Ack) and ack.seqs == tuple(seqs)
    assert_typed(ack, messages.Ack)


def test_optional_fields_may_be_left_off() -> None:
    assert decode(frame(PROTOCOL_VERSION, Done.TYPE, ["r", 7])) == Done("r", 7, "")
    assert decode(frame(PROTOCOL_VERSION, PlanUpdate.TYPE, ["r", 4])) == PlanUpdate("r", 4)
    update = decode(frame(PROTOCOL_VERSION, PlanUpdate.TYPE, ["r", 4, [4, [1, 0], 0], None, 9]))
    assert update == PlanUpdate("r", 4, Share(4, (1, 0), 0), None, 9)
    assert_typed(update, PlanUpdate)


# -- hostile input ------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xc1")  # never used
@example(b"\x93\x01\x0c\x91\xd9\x02\xff\xfe")  # invalid UTF-8 text
def test_random_bytes(data: bytes) -> None:
    decode_or_protocol_error(data)


@SETTINGS
@given(any_packable)
def test_random_msgpack_values(value: Any) -> None:
    decode_or_protocol_error(msgpack.packb(value, use_bin_type=True, datetime=False))


@SETTINGS
@given(
    st.sampled_from([cls.TYPE for cls in MESSAGE_TYPES]) | st.integers(-3, 40),
    st.lists(any_packable, max_size=12) | any_packable,
)
def test_right_envelope_random_fields(type_id: int, fields: Any) -> None:
    decode_or_protocol_error(frame(PROTOCOL_VERSION, type_id, fields))


@SETTINGS
@given(data=st.data())
def test_one_field_replaced_by_anything(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(MESSAGE_TYPES))
    fields = plain(data.draw(strategy_for(cls)))
    position = data.draw(st.integers(0, len(fields) - 1))
    fields[position] = data.draw(any_packable)
    decode_or_protocol_error(frame(PROTOCOL_VERSION, cls.TYPE, fields))


@ALL
def test_every_truncation_is_malformed(cls: type[Any]) -> None:
    wire = encode(sample(cls))
    for cut in range(len(wire)):
        with pytest.raises(MalformedFrame):
            decode(wire[:cut])


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode(encode(Bye("x")) + b"\xc0")


V = PROTOCOL_VERSION


@pytest.mark.parametrize(
    "version", [0, V - 1, V + 1, -1, 2**64 - 1, str(V), float(V), True, None, [V], {"v": V}]
)
def test_wrong_version(version: Any) -> None:
    with pytest.raises(VersionMismatch) as caught:
        decode(frame(version, Bye.TYPE, ["x"]))
    assert caught.value.version == version and type(caught.value.version) is type(version)
    assert peek_version(frame(version, Bye.TYPE, ["x"])) == version


def test_wrong_version_timestamp_is_still_a_protocol_error() -> None:
    with pytest.raises(VersionMismatch):
        decode(frame(msgpack.Timestamp(1, 0), Bye.TYPE, ["x"]))


def test_peek_version_on_garbage() -> None:
    assert peek_version(b"\xc1") is None
    assert peek_version(msgpack.packb({"a": 1})) is None


@pytest.mark.parametrize("type_id", [0, -1, 16, 99, 2**64 - 1])
def test_unknown_message_type(type_id: int) -> None:
    with pytest.raises(UnknownMessageType):
        decode(frame(PROTOCOL_VERSION, type_id, ["x"]))


@pytest.mark.parametrize("type_id", ["12", 12.0, True, None, [12]])
def test_message_type_not_an_int(type_id: Any) -> None:
    with pytest.raises(MalformedFrame):
        decode(frame(PROTOCOL_VERSION, type_id, ["x"]))


@pytest.mark.parametrize(
    "payload", [[], [1], [1, 12], [1, 12, ["x"], 0], {"v": 1}, "frame", 7, None]
)
def test_wrong_envelope_shape(payload: Any) -> None:
    with pytest.raises(MalformedFrame):
        decode(msgpack.packb(payload))


@ALL
def test_field_counts(cls: type[Any]) -> None:
    fields = plain(sample(cls))
    required = sum(
        1
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    with pytest.raises(InvalidMessage):
        decode(frame(PROTOCOL_VERSION, cls.TYPE, [*fields, None]))
    with pytest.raises(InvalidMessage):
        decode(frame(PROTOCOL_VERSION, cls.TYPE, fields[: required - 1]))
    with pytest.raises(InvalidMessage):
        decode(frame(PROTOCOL_VERSION, cls.TYPE, {"fields": fields}))
    decode(frame(PROTOCOL_VERSION, cls.TYPE, fields[:required]))  # the minimum is fine


def _wrong_values(tp: Any) -> list[Any]:
    """Values of the wrong type for a declared field type."""
    if tp is Any:
        return [msgpack.Timestamp(5, 0)]  # the one thing msgpack yields that the protocol bans
    if tp is int:
        return ["1", 1.0, True, None, [1]]
    if tp is float:
        return ["1.5", True, None, [1.5], b"1"]
    if tp in (str, bytes):
        return [b"x" if tp is str else "x", 1, None, ["x"]]
    inner = _is_optional(tp)
    if inner is not None:
        return [v for v in _wrong_values(inner) if v is not None]
    if dataclasses.is_dataclass(tp):
        return [1, "share", {"since": 1}, [1], [1, [1], 0, 0, 0]]
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        return [{"a": 1}, "abc", 3, *[[w] for w in _wrong_values(item)[:2]]]
    if typing.get_origin(tp) is list:  # opaque: only the container is the codec's to check
        return [{"a": 1}, "abc", 3, None, b"list"]
    if typing.get_origin(tp) is dict:
        _, value_type = typing.get_args(tp)
        bad = [[1, 2], "abc", 3, {b"bytes-key": _plain_example(value_type)}]
        return bad + [{"k": w} for w in _wrong_values(value_type)[:2]]
    raise AssertionError(tp)


def _plain_example(tp: Any) -> Any:
    return {int: 1, float: 1.0, str: "s", bytes: b"b"}.get(tp)


@ALL
def test_wrong_field_types(cls: type[Any]) -> None:
    hints = typing.get_type_hints(cls)
    good = plain(sample(cls))
    for position, f in enumerate(dataclasses.fields(cls)):
        for bad in _wrong_values(hints[f.name]):
            fields = list(good)
            fields[position] = bad
            with pytest.raises(InvalidMessage, match=rf"^{cls.__name__}\.{f.name}\b"):
                decode(frame(PROTOCOL_VERSION, cls.TYPE, fields))


def test_nested_wrong_types_name_the_path() -> None:
    good = plain(sample(Snapshot))
    good[6] = [plain(Series("p", "n", 1, {"ok": 1})), ["p", "n", "1", {}]]
    with pytest.raises(InvalidMessage, match=r"^Snapshot\.series\[1\]\.arrivals: expected int"):
        decode(frame(PROTOCOL_VERSION, Snapshot.TYPE, good))
    good[6] = [["p", "n", 1, {"ok": 1.5}]]
    with pytest.raises(InvalidMessage, match=r"^Snapshot\.series\[0\]\.outcomes\['ok'\]: "):
        decode(frame(PROTOCOL_VERSION, Snapshot.TYPE, good))


@pytest.mark.parametrize("code", [0, 1, 42, 127])
def test_extension_types_are_refused(code: int) -> None:
    ext = msgpack.ExtType(code, b"\x00" * 4)
    with pytest.raises(MalformedFrame):
        decode(frame(PROTOCOL_VERSION, Bye.TYPE, [ext]))
    with pytest.raises(MalformedFrame):
        decode(frame(PROTOCOL_VERSION, Plan.TYPE, ["r", {"k": [ext]}, [0, [1], 0], 0.0, 1.0]))


@pytest.mark.parametrize(
    "stamp", [msgpack.Timestamp(1, 0), msgpack.Timestamp(2**33, 5), msgpack.Timestamp(2**40, 1)]
)
def test_timestamps_are_refused_even_in_free_form_fields(stamp: msgpack.Timestamp) -> None:
    """msgpack decodes extension type -1 to a Timestamp without asking ext_hook."""
    share = [0, [1], 0]
    for scenario in ({"when": stamp}, {"a": [1, {"b": [stamp]}]}):
        with pytest.raises(InvalidMessage, match="scenario"):
            decode(frame(PROTOCOL_VERSION, Plan.TYPE, ["r", scenario, share, 0.0, 1.0]))
    # Histogram tables are opaque to the codec (the coordinator's hot path validates
    # them once, in decode_tables, before any merge): there the timestamp must be refused.
    table = [stamp, b"", b"", b"", b"", b"", 1, b""]
    snap = ["r", "a", 1, 1, 0.0, 1.0, [["p", "n", 1, {}]], table, 0, 0, 0.0, 0]
    decoded = decode(frame(PROTOCOL_VERSION, Snapshot.TYPE, snap))
    assert isinstance(decoded, Snapshot)
    with pytest.raises(HistogramWireError):
        decode_tables([decoded.histograms], [3])
    with pytest.raises(InvalidMessage):
        decode(frame(PROTOCOL_VERSION, Bye.TYPE, [stamp]))


def test_invalid_timestamp_payload_is_malformed() -> None:
    # ext -1 must be 4, 8 or 12 bytes
    bad = msgpack.packb([1, 12, []])[:-1] + b"\x91\xc7\x03\xff\x00\x00\x00"
    with pytest.raises(ProtocolError):
        decode(bad)


def test_map_keys_must_be_text() -> None:
    with pytest.raises(MalformedFrame):
        decode(frame(PROTOCOL_VERSION, Plan.TYPE, ["r", {1: "x"}, [0, [1], 0], 0.0, 1.0]))
    with pytest.raises(MalformedFrame):
        decode(frame(PROTOCOL_VERSION, Plan.TYPE, ["r", {"a": {None: 1}}, [0, [1], 0], 0.0, 1.0]))


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 2^32 - 1 elements
        b"\xdf\xff\xff\xff\xff",  # map32
        b"\xdb\xff\xff\xff\xff",  # str32
        b"\xc6\xff\xff\xff\xff",  # bin32
        b"\xc9\xff\xff\xff\xff\x05",  # ext32
        b"\xdc\xff\xff",  # array16
    ],
)
def test_huge_declared_sizes(header: bytes) -> None:
    prefix = b"\x93\x01\x05"  # [1, 5, <fields...
    for data in (header + b"\xc0" * 8, prefix + header + b"\x01\x02", header):
        with pytest.raises(MalformedFrame):
            decode(data)


def test_deep_nesting() -> None:
    with pytest.raises(MalformedFrame):
        decode(b"\x91" * 100_000 + b"\xc0")
    deep = msgpack.packb([1, 12, [0]])
    for _ in range(200):  # legal depth, wrong shape
        deep = b"\x91" + deep
    with pytest.raises(MalformedFrame):
        decode(deep)


def test_out_of_range_ints_do_not_escape() -> None:
    # msgpack's int64/uint64 decode fine; a field that wants a float takes them as floats
    fields = ["r", 2**64 - 1]
    assert decode(frame(PROTOCOL_VERSION, Done.TYPE, fields)) == Done("r", 2**64 - 1)
    ping = decode(frame(PROTOCOL_VERSION, messages.Ping.TYPE, [-(2**63), 2**64 - 1]))
    assert ping == messages.Ping(-(2**63), float(2**64 - 1))


@pytest.fixture(scope="module")
def oversized() -> bytes:
    return b"\x00" * (MAX_FRAME_BYTES + 1)


def test_oversized_frames(oversized: bytes) -> None:
    with pytest.raises(FrameTooLarge):
        decode(oversized)
    with pytest.raises(FrameTooLarge):
        decode(frame(PROTOCOL_VERSION, Bye.TYPE, [oversized]))
    with pytest.raises(FrameTooLarge):
        encode(Plan("r", {}, Share(0, (1,), 0), 0.0, 1.0, {"big": oversized}))


def test_frame_at_the_limit_is_not_too_large() -> None:
    """The limit is on the frame: a frame of exactly MAX_FRAME_BYTES passes the size check."""
    overhead = len(frame(PROTOCOL_VERSION, Bye.TYPE, [b""])) - 2 + 5  # bin8 -> bin32 header
    data = frame(PROTOCOL_VERSION, Bye.TYPE, [b"\x00" * (MAX_FRAME_BYTES - overhead)])
    assert len(data) == MAX_FRAME_BYTES
    with pytest.raises(InvalidMessage):  # bytes where text is declared: past the size check
        decode(data)
