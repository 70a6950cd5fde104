"""Damage to one field of a wire form, drawn by hypothesis: the hostile-input tests
of the histogram wire form and of the histogram table share it."""

from __future__ import annotations

from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 10),
    st.floats(allow_nan=True),
    st.binary(max_size=64),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)
DAMAGE = ("value", "truncate", "extend", "flip", "flip2", "drop")


def damage(data: st.DataObject, fields: Any, key: Any) -> None:
    """Replace, truncate, extend, flip one or two bytes of, or drop `fields[key]`
    (a list or a dict), in place."""
    how = data.draw(st.sampled_from(DAMAGE))
    v = fields[key]
    if how == "drop":
        del fields[key]
    elif how == "value" or not isinstance(v, bytes):
        fields[key] = data.draw(ANY_VALUE)
    elif how == "truncate":
        fields[key] = v[: data.draw(st.integers(0, max(len(v) - 1, 0)))]
    elif how == "extend":
        fields[key] = v + data.draw(st.binary(min_size=1, max_size=16))
    else:
        assume(len(v) > 0)
        for _ in range(1 if how == "flip" else 2):
            pos = data.draw(st.integers(0, len(v) - 1))
            v = v[:pos] + bytes([v[pos] ^ data.draw(st.integers(1, 255))]) + v[pos + 1 :]
        fields[key] = v
