"""The one decision on what can be stored: every unstorable value found, with where it is."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.runtime.storable import UnstorableValue, decode, describe, echoable, encode, is_storable, unstorable

pytestmark = pytest.mark.unit

STORABLE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=["Cs"],
                                                                                exclude_characters="\x00")),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")), children,
                      max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize(("body", "where", "why"), [
    ('{"userId": "u\\ud800"}', ("userId",), "lone surrogate (\\ud800)"),
    ('{"p": {"k": ["ok", "\\udfff"]}}', ("p", "k", 1), "lone surrogate (\\udfff)"),
    ('{"amount": NaN}', ("amount",), "finite number"),
    ('{"amount": Infinity}', ("amount",), "finite number"),
    ('{"amount": -Infinity}', ("amount",), "finite number"),
    ('{"amount": 1e400}', ("amount",), "finite number"),
    ('{"n": 18446744073709551616}', ("n",), "64 bits"),
    ('{"s": "a\\u0000b"}', ("s",), "NUL"),
])
def test_each_unstorable_value_is_found_where_it_is(body: str, where: tuple[str | int, ...], why: str) -> None:
    problems = unstorable(json.loads(body), ("body",))
    assert [loc for loc, _ in problems] == [("body", *where)]
    assert why in problems[0][1]


def test_an_unstorable_key_is_named_with_its_escape_and_every_problem_is_listed() -> None:
    problems = unstorable(json.loads('{"a\\ud800": 1, "b": NaN}'))
    assert problems == [(("a\\ud800",), "key contains a lone surrogate (\\ud800), which is not storable text"),
                        (("b",), "must be a finite number, not nan")]
    assert describe(("body", "events", 2, "userId")) == "body.events.2.userId"


@given(STORABLE_JSON)
def test_what_orjson_round_trips_is_storable(value: object) -> None:
    assert unstorable(value) == []
    assert decode(encode(value)) == orjson.loads(orjson.dumps(value))


ANY_JSON = st.recursive(  # storable values and every kind the walk refuses, nested up past its depth limit
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text()
    | st.sampled_from(["\ud800", "a\x00b", "\\u0000", "null", float("inf"), 2**64, -(2**63) - 1]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=80,
)


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@given(ANY_JSON)
def test_the_encoding_shortcut_agrees_with_the_walk(value: object) -> None:
    problems = unstorable(value)
    assert is_storable(value) is (problems == [])
    if problems:
        with pytest.raises(UnstorableValue):
            encode(value)
    else:
        assert encode(value) == orjson.dumps(value)


@given(ANY_JSON, st.booleans(), st.booleans())
def test_decoding_without_the_walk_agrees_with_the_walk(value: object, ascii_only: bool, as_bytes: bool) -> None:
    # the text any producer might write: escapes for NUL and lone surrogates, NaN and Infinity, huge integers
    text = json.dumps(value, ensure_ascii=ascii_only)
    raw: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed_problems: list[object] | None = None
    else:
        parsed_problems = unstorable(parsed)
    if parsed_problems == []:
        assert decode(raw) == parsed
    else:
        with pytest.raises(UnstorableValue):
            decode(raw)


@pytest.mark.parametrize("depth", [62, 63, 64, 65, 100])
def test_decoding_keeps_the_depth_limit(depth: int) -> None:
    raw = orjson.dumps(_nested(depth))
    if unstorable(_nested(depth)):
        with pytest.raises(UnstorableValue, match="nested deeper"):
            decode(raw)
    else:
        assert decode(raw) == _nested(depth)


@pytest.mark.parametrize("depth", [62, 63, 64, 65, 100])
def test_the_encoding_shortcut_keeps_the_depth_limit(depth: int) -> None:
    assert is_storable(_nested(depth)) is (unstorable(_nested(depth)) == [])
    assert is_storable(_nested(100)) is False


def test_encode_and_decode_refuse_instead_of_losing_the_value() -> None:
    with pytest.raises(UnstorableValue, match="amount: must be a finite number"):
        encode({"amount": float("nan")})  # orjson alone would write null
    for raw in (b'{"amount": NaN}', b'{"u": "\\ud800"}', b'{"amount": 1e400}', b"not json"):
        with pytest.raises(UnstorableValue):
            decode(raw)


def test_an_echo_of_what_was_sent_always_encodes_and_keeps_what_was_fine() -> None:
    sent = {"u\ud800": ["ok", "a\x00b", float("nan"), -float("inf"), b"\xed\xa0\x80", ValueError("x\udfff")],
            "n": 2**70, "t": ("ユーザー🙂", 1.5)}
    echoed = echoable(sent)
    assert echoed == {"u\\ud800": ["ok", "a\\u0000b", "nan", "-inf", "\\xed\\xa0\\x80", "x\\udfff"],
                      "n": 2**70, "t": ["ユーザー🙂", 1.5]}
    assert json.loads(json.dumps(echoed, allow_nan=False, ensure_ascii=False).encode()) == echoed


def test_an_echo_stops_where_the_walk_stops() -> None:
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    echoed = echoable(deep)
    for _ in range(64):
        assert isinstance(echoed, list)
        echoed = echoed[0]
    assert echoed == "..."
