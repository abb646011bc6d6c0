"""The key_delivered event's provenance summary: the cached form answers as the plain
functions do (merge, per-hop counts, exposed nodes), for shared and mixed provenance."""

from __future__ import annotations

from keyplane.keymanager.hybrid import count_provenance, merge_provenance
from keyplane.keymanager.production import _provenance_summary
from keyplane.keymanager.vault import HeldKey
from keyplane.trust import exposed_nodes

QKD = [{"hop": "km0->km1", "source": "qkd"}, {"hop": "km1->km2", "source": "qkd"}]
MIXED = [{"hop": "km0->km1", "source": "qkd"}, {"hop": "km1->km2", "source": "pqc"},
         {"hop": "km1->km2", "source": "qkd"}]


def _keys(*provenances: list[dict[str, str]]) -> list[HeldKey]:
    return [HeldKey(f"id{i}", "s", i, 256, b"\0" * 32, "ready", provenance=list(p))
            for i, p in enumerate(provenances)]


def _plain(keys: list[HeldKey]) -> tuple[object, object, object]:
    return (merge_provenance(*(k.provenance for k in keys)),
            count_provenance(k.provenance for k in keys),
            exposed_nodes(r for k in keys for r in k.provenance))


def test_delivery_summary_of_shared_provenance_matches_the_plain_functions() -> None:
    for keys in (_keys(QKD), _keys(QKD, QKD, QKD), _keys(MIXED, MIXED), _keys([])):
        assert _provenance_summary(keys) == _plain(keys)
        assert _provenance_summary(keys) == _plain(keys)  # from the cache, same answer


def test_delivery_summary_of_mixed_provenance_matches_the_plain_functions() -> None:
    keys = _keys(QKD, MIXED, QKD)
    assert _provenance_summary(keys) == _plain(keys)


def test_delivery_summary_gives_fresh_containers_each_call() -> None:
    keys = _keys(QKD, QKD)
    first = _provenance_summary(keys)
    first[0][0]["hop"] = "changed"
    first[1][0]["key_count"]["qkd"] = 99
    first[2].append("intruder")
    assert _provenance_summary(keys) == _plain(keys)
