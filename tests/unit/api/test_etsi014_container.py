"""ETSI 014 Key containers written from a DeliveredKeys answer's lists: the same bytes as
the general path (one dict per key, one serializer pass), for every shape of answer."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import pytest

from keyplane.api.etsi014.app import _container_json
from keyplane.keymanager.interface import DeliveredKey, DeliveredKeys


def _answer(rng: random.Random, n: int, ids: str) -> DeliveredKeys:
    shared = {"keyplane_provenance": [{"hop": "km0-km1", "source": "qkd"}]}
    odd = {"keyplane_provenance": [{"hop": "kmé-κ1", "source": "pqc \"quoted\" \\ \n"}]}
    key_ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
    if ids == "upper":
        key_ids = [i.upper() for i in key_ids]
    elif ids == "escaped":  # not a UUID: written through the general path
        key_ids[rng.randrange(n)] = 'a"b\\c'
    exts: list[dict[str, Any] | None] = [rng.choice([shared, odd, None, {}]) for _ in range(n)]
    return DeliveredKeys(key_ids, [rng.randbytes(rng.choice([1, 16, 32, 33])) for _ in range(n)],
                         exts)


@pytest.mark.parametrize("ids", ["uuid", "upper", "escaped"])
def test_container_from_lists_is_byte_identical_to_the_general_path(ids: str) -> None:
    rng = random.Random(1507)
    for n in (1, 2, 3, 100):
        keys = _answer(rng, n, ids)
        fast = _container_json(keys)
        assert fast == _container_json(list(keys))  # a list takes the general path
        body = json.loads(fast)
        assert [k["key_ID"] for k in body["keys"]] == keys.key_ids



@pytest.mark.parametrize("ext", [{"keyplane_provenance": [{"hop": "km0-km1", "source": "qkd"}]},
                                 {"keyplane_provenance": [{"hop": "kmé", "source": "a\"b"}]},
                                 None, {}])
def test_container_of_one_shared_extension_is_byte_identical(ext: dict[str, Any] | None
                                                             ) -> None:
    """A relay batch's keys share one extension object: written without a lookup per key,
    the same bytes as the general path, key sizes mixed."""
    rng = random.Random(1508)
    for n in (1, 2, 3, 100):
        keys = DeliveredKeys([str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)],
                             [rng.randbytes(rng.choice([1, 16, 32, 33, 64])) for _ in range(n)],
                             [ext] * n)
        fast = _container_json(keys)
        assert fast == _container_json(list(keys))
        body = json.loads(fast)
        assert [k["key_ID"] for k in body["keys"]] == keys.key_ids
        assert [k.get("key_extension") for k in body["keys"]] == [ext or None] * n

def test_empty_answer() -> None:
    assert _container_json(DeliveredKeys([], [], [])) == _container_json([]) == b'{"keys":[]}'


def test_delivered_keys_reads_as_a_sequence_of_keys() -> None:
    keys = DeliveredKeys(["a", "b"], [b"\x01", b"\x02"], [None, {"x": 1}])
    as_list = [DeliveredKey("a", b"\x01"), DeliveredKey("b", b"\x02", {"x": 1})]
    assert keys == as_list and list(keys) == as_list and len(keys) == 2
    assert keys[1] == as_list[1] and keys[-1] == as_list[1] and keys[:1] == as_list[:1]
    assert keys != as_list[:1] and keys != "ab"
    assert keys + keys == as_list + as_list == as_list + keys  # concatenates as a list
    assert "\\x01" not in repr(keys) and "a" in repr(keys)
    with pytest.raises(ValueError, match="differ in length"):
        DeliveredKeys(["a"], [], [None])
