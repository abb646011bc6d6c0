"""A frame's MAC input is byte for byte ``json.dumps(sort_keys, compact, ensure_ascii)``.

``wire._canonical`` writes it with pydantic's serializer when that gives the same bytes
(issue #15: it was about a tenth of a relay hop's CPU in bulk); a KM of an older version
computes tags the json.dumps way, so any difference would make every frame between them
fail verification. Checked on generated frames with arbitrary text (non-ASCII, control
characters, DEL, quotes, backslashes), large and negative integers, and nested dicts.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.keymanager.wire import (
    ConfirmFrame,
    DemandFrame,
    KeyFrame,
    PqcBlob,
    _canonical,
    seal,
    verify,
)

# arbitrary text, and text made of exactly the characters where the two writers could part
_text = st.text(max_size=40) | st.text(alphabet='az09 "\\/\x00\x1f\x7f\u00e9\u2028\U0001f600',
                                       max_size=12)
_ints = st.integers(min_value=-(2**70), max_value=2**70)
# what version 3 frames carry as one string each: ids without a comma, indexes of a stream
_ids = st.lists(_text.filter(lambda t: "," not in t), max_size=8).filter(lambda v: v != [""])
_indexes = st.lists(st.integers(min_value=0, max_value=10**19 - 1), max_size=8)
_provenance = st.lists(st.dictionaries(_text, _text, max_size=4), max_size=3)
_segments = st.lists(st.tuples(_ints, _ints, st.integers(min_value=1, max_value=2**40)),
                     max_size=4)
_pqc = st.none() | st.builds(PqcBlob, exchange_id=_text, ciphertext=_text, cert_pem=_text,
                             signature=_text)


def _reference(body: dict[str, Any]) -> bytes:
    body = dict(body)
    body.pop("tag", None)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


key_frames = st.builds(
    KeyFrame, session_id=_text, epoch=_ints, sender=_text, link_id=_text, segments=_segments,
    batch_id=_text, key_ids=_ids, indexes=_indexes,
    key_size_bytes=st.integers(min_value=1, max_value=2**40), direct=st.booleans(),
    ciphertext=_text, attempt=_ints, hop_source=st.sampled_from(["qkd", "pqc", "combined"]),
    pqc=_pqc, policy=st.none() | _text, provenance=_provenance, tag=_text)
confirm_frames = st.builds(
    ConfirmFrame, session_id=_text, epoch=_ints, sender=_text, link_id=_text,
    segments=_segments, batch_id=_text, key_ids=_ids, ok=st.booleans(),
    reason=_text, cause=_text, pqc=_pqc, provenance=_provenance)
demand_frames = st.builds(
    DemandFrame, session_id=_text, epoch=_ints, sender=_text, link_id=_text,
    segments=_segments, indexes=st.lists(_ints, max_size=8), pqc=_pqc)


@settings(max_examples=400, deadline=None)
@given(st.one_of(key_frames, confirm_frames, demand_frames))
def test_canonical_bytes_are_json_dumps(frame: KeyFrame | ConfirmFrame | DemandFrame) -> None:
    body = frame.model_dump(mode="json")
    assert _canonical(body) == _reference(body)


def test_ascii_frame_takes_the_serializer_and_verifies() -> None:
    frame = KeyFrame(session_id="s", epoch=3, sender="km0", link_id="km0~km1",
                     segments=[(7, 0, 64)], batch_id="b", key_ids=["a", "b"], indexes=[1, 2],
                     key_size_bytes=32, provenance=[{"to": "km1", "from": "km0"}])
    body = frame.model_dump(mode="json")
    assert _canonical(body) == _reference(body)
    sealed = seal(frame, b"k" * 32)
    assert verify(sealed, b"k" * 32)
    assert not verify(sealed.model_copy(update={"indexes": [1, 3]}), b"k" * 32)
    assert not verify(sealed, b"j" * 32)


def test_text_the_serializer_refuses_takes_json_dumps() -> None:
    """A lone surrogate (pydantic's serializer raises on it, json.dumps escapes it): the
    tag input is still json.dumps' bytes, not an exception."""
    body = {"reason": "bad \ud800 text", "key_ids": ["a"], "tag": "x"}
    assert _canonical(body) == _reference(body)
