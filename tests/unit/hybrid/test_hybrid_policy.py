"""Provenance records and the ETSI 014 provenance extension (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.config import HybridPolicy
from keyplane.keymanager.hybrid import (
    PROVENANCE_EXTENSION,
    HopSource,
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
