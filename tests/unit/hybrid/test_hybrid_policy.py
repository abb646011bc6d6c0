"""Provenance records and the ETSI 014 provenance extension (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from keyplane.config import HybridPolicy
from keyplane.keymanager.hybrid import (
    PROVENANCE_EXTENSION,
    HopSource,
    count_provenance,
    hop_record,
    merge_provenance,
    preferred_sources,
    provenance_requirement,
    satisfies,
)

records = st.lists(st.builds(hop_record, st.sampled_from(["km0", "km1"]),
                             st.sampled_from(["km2", "km3"]), st.sampled_from(list(HopSource))),
                   min_size=1, max_size=6)


@given(records, st.sampled_from(list(HybridPolicy)))
def test_satisfies_holds_exactly_when_every_hop_is_allowed(prov: list[dict[str, str]],
                                                            policy: HybridPolicy) -> None:
    assert satisfies(prov, policy) == all(r["source"] in policy.hop_sources for r in prov)


@given(records, records)
def test_merged_provenance_keeps_every_crossing_so_the_weakest_governs(
        a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    merged = merge_provenance(a, b)
    assert {(r["hop"], r["source"]) for r in merged} == \
        {(r["hop"], r["source"]) for r in a + b}
    for policy in HybridPolicy:
        assert satisfies(merged, policy) == (satisfies(a, policy) and satisfies(b, policy))


@seed(1010)
@given(st.lists(records, max_size=5))
def test_provenance_counts_are_per_key_per_hop_and_source_with_the_last_key_last(
        keys: list[list[dict[str, str]]]) -> None:
    counted = count_provenance(keys)
    hops = [e["hop"] for e in counted]
    assert len(hops) == len(set(hops))
    for entry in counted:
        for source in HopSource:
            crossed = sum(1 for k in keys if hop_record(*entry["hop"].split("->"), source) in k)
            assert entry["key_count"].get(source.value, 0) == crossed
        last_key = [k for k in keys if any(r["hop"] == entry["hop"] for r in k)][-1]
        assert entry["last_source"] == [r["source"] for r in last_key
                                        if r["hop"] == entry["hop"]][-1]


def test_provenance_counts_follow_path_order_for_a_mixed_batch() -> None:
    qkd = [hop_record("km0", "km1", "qkd"), hop_record("km1", "km2", "qkd")]
    pqc = [hop_record("km0", "km1", "qkd"), hop_record("km1", "km2", "pqc")]
    assert count_provenance([qkd, pqc, qkd]) == [
        {"hop": "km0->km1", "key_count": {"qkd": 3}, "last_source": "qkd"},
        {"hop": "km1->km2", "key_count": {"qkd": 2, "pqc": 1}, "last_source": "qkd"}]
    assert count_provenance([]) == []


def test_every_preferred_source_is_allowed_and_pqc_alone_only_for_either() -> None:
    for policy in HybridPolicy:
        assert set(preferred_sources(policy)) <= policy.hop_sources
    assert [p for p in HybridPolicy if HopSource.pqc in preferred_sources(p)] == \
        [HybridPolicy.either]
    assert preferred_sources("either")[0] is HopSource.qkd  # back to QKD when key is there


def test_empty_provenance_satisfies_nothing() -> None:
    assert not satisfies([], "either")


def test_provenance_requirement_reads_mandatory_optional_and_unknown_names() -> None:
    ext = {"extension_mandatory": [{PROVENANCE_EXTENSION: "qkd-only"}, {"vendor_x": 1}],
           "extension_optional": [{PROVENANCE_EXTENSION: "at-least-qkd"}]}
    assert provenance_requirement(ext) == (HybridPolicy.qkd_only, HybridPolicy.at_least_qkd,
                                           ["vendor_x"])
    assert provenance_requirement({"extension_mandatory": {PROVENANCE_EXTENSION: "either"}}
                                  ) == (HybridPolicy.either, None, [])
    assert provenance_requirement(None) == (None, None, [])
    with pytest.raises(ValueError, match="must be one of"):
        provenance_requirement({"extension_mandatory": [{PROVENANCE_EXTENSION: "qkd"}]})
