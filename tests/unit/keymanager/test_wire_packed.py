"""Version 3 key and confirm frames carry their key ids and indexes as one string each
(issue #15: as JSON lists they were most of a bulk frame's cost at every hop). In Python
they stay lists; these pin the wire form, its round trip, and what it refuses."""

from __future__ import annotations

import hashlib
import hmac
import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from keyplane.bus.codec import decode, encode
from keyplane.errors import MessageDecodeError
from keyplane.keymanager.wire import MAX_FRAME_KEYS, ConfirmFrame, KeyFrame, seal, verify


def _frame(key_ids: list[str], indexes: list[int]) -> KeyFrame:
    return KeyFrame(session_id="s", epoch=1, sender="km0", link_id="km0~km1",
                    segments=[(7, 0, 64)], batch_id="b", key_ids=key_ids, indexes=indexes,
                    key_size_bytes=32)


def _body(frame: KeyFrame | ConfirmFrame) -> dict[str, object]:
    body = json.loads(encode(frame))["body"]
    assert isinstance(body, dict)
    return body


def test_a_fresh_batch_is_one_run_and_its_ids_one_string() -> None:
    ids = [f"id-{i}" for i in range(1000)]
    frame = _frame(ids, list(range(5000, 6000)))
    body = _body(frame)
    assert body["key_ids"] == ",".join(ids) and body["indexes"] == "5000+1000"
    back = decode(encode(frame))
    assert isinstance(back, KeyFrame)
    assert back.key_ids == ids and back.indexes == list(range(5000, 6000)) and back == frame


@pytest.mark.parametrize(("indexes", "wire"), [
    ([], ""), ([7], "7"), ([0, 1], "0+2"), ([3, 5, 6, 7, 9], "3,5+3,9"),
    ([9, 8, 7], "9,8,7"), ([4, 4], "4,4"), ([2**63], str(2**63))])
def test_indexes_in_any_order_are_runs(indexes: list[int], wire: str) -> None:
    frame = _frame([f"k{i}" for i in range(len(indexes))], indexes)
    assert _body(frame)["indexes"] == wire
    back = decode(encode(frame))
    assert isinstance(back, KeyFrame) and back.indexes == indexes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12).filter(lambda t: "," not in t), max_size=20)
       .filter(lambda v: v != [""]),
       st.lists(st.integers(min_value=0, max_value=10**19 - 1), max_size=20))
def test_round_trip_and_tag(ids: list[str], indexes: list[int]) -> None:
    frame = seal(_frame(ids, indexes), b"k" * 32)
    back = decode(encode(frame))
    assert isinstance(back, KeyFrame)
    assert back.key_ids == ids and back.indexes == indexes
    assert verify(back, b"k" * 32)


@pytest.mark.parametrize(("ids", "indexes"), [
    (["a,b"], [1]), ([""], [1]), (["a"], [-1])])
def test_what_the_wire_form_cannot_carry_is_refused_when_made(
        ids: list[str], indexes: list[int]) -> None:
    with pytest.raises(ValidationError):
        _frame(ids, indexes)


def test_empty_ids_among_others_round_trip() -> None:
    frame = _frame(["", "a", ""], [1, 2, 3])
    back = decode(encode(frame))
    assert isinstance(back, KeyFrame) and back.key_ids == ["", "a", ""]


@pytest.mark.parametrize("wire", [
    "-1", "1+", "+3", "1,,2", "1 ,2", "a", "1+2+3", "1.5", f"0+{MAX_FRAME_KEYS + 1}",
    ",".join(["0+524288"] * 3), "1" * 20])
def test_indexes_not_of_the_wire_form_or_too_many_are_refused_on_decode(wire: str) -> None:
    data = encode(_frame(["a"], [1])).replace(b'"indexes":"1"', b'"indexes":' +
                                                  json.dumps(wire).encode())
    with pytest.raises(MessageDecodeError):
        decode(data)


def test_a_version_2_frame_decodes_but_its_tag_does_not_verify() -> None:
    """A KM of the previous version writes lists and tags the lists: this version reads
    the body, and the tag fails (the KMs of a path are upgraded together; docs)."""
    new = seal(_frame(["a", "b"], [4, 5]), b"k" * 32)
    body = json.loads(encode(new))["body"]
    body["key_ids"], body["indexes"] = ["a", "b"], [4, 5]
    del body["tag"]
    body["tag"] = hmac.new(b"k" * 32, json.dumps(body, sort_keys=True, separators=(",", ":"))
                           .encode(), hashlib.sha256).hexdigest()  # version 2's tag input
    old = decode(json.dumps({"kind": KeyFrame.KIND, "v": 2, "body": body}).encode())
    assert isinstance(old, KeyFrame) and old.key_ids == ["a", "b"] and old.indexes == [4, 5]
    assert old.tag != new.tag and not verify(old, b"k" * 32) and verify(new, b"k" * 32)
    confirm = ConfirmFrame(session_id="s", epoch=1, sender="km1", link_id="l", segments=[],
                           batch_id="b", key_ids=["a", "b"], ok=True)
    assert _body(confirm)["key_ids"] == "a,b"


def test_runs_past_the_bound_are_refused_before_they_are_expanded() -> None:
    """A 300-byte frame must not make ten million ints before its tag is checked (the
    review: the bound was checked after each run was expanded)."""
    data = encode(_frame(["a"], [1])).replace(b'"indexes":"1"', b'"indexes":"0+9999999,0"')
    tracemalloc.start()
    try:
        with pytest.raises(MessageDecodeError):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # ten million ints would be hundreds of MB


def test_too_many_ids_on_the_wire_are_refused() -> None:
    data = encode(_frame(["a"], [1])).replace(
        b'"key_ids":"a"', b'"key_ids":"' + b"," * MAX_FRAME_KEYS + b'"')
    with pytest.raises(MessageDecodeError):
        decode(data)


@pytest.mark.parametrize("ids", [("a,b",), {"a"}, iter(["a"]), [b"a,b"], ["a", 1]])
def test_ids_other_than_a_list_or_tuple_of_str_without_commas_are_refused(ids: object) -> None:
    with pytest.raises(ValidationError):
        _frame(ids, [1])  # type: ignore[arg-type]


def test_an_index_the_runs_cannot_carry_is_refused_when_made() -> None:
    with pytest.raises(ValidationError):
        _frame(["a"], [10**19])
    assert decode(encode(_frame(["a", "b"], [10**19 - 1, 0]))).indexes == [  # type: ignore[attr-defined]
        10**19 - 1, 0]
