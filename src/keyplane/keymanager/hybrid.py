"""Hybrid provisioning policy: which key source each KM-to-KM hop may use (pure logic).

A hop's key comes from one of three sources (:class:`HopSource`): the QKD link key stream
(``qkd``), an authenticated ML-KEM-768 exchange between the two KMs (``pqc``,
:mod:`keyplane.keymanager.pqc`), or both XOR-combined (``combined``). A user's SLA profile
names a :class:`~keyplane.config.HybridPolicy`; this module says what each policy allows and
prefers:

=============  ==========================  ====================  ============================
policy         allowed hop sources         preference            when QKD key is short / down
=============  ==========================  ====================  ============================
qkd-only       qkd                         qkd                   refuse (InsufficientKeyMaterial)
at-least-qkd   qkd, combined               combined, qkd         refuse (never PQC alone)
qkd-and-pqc    combined                    combined              refuse
either         qkd, pqc, combined          qkd, pqc              PQC alone
=============  ==========================  ====================  ============================

Policies compose by intersecting their allowed sets (:func:`meet`): the two users of a
session, or a session and an application's ``extension_mandatory`` provenance requirement.
Every non-empty intersection is again one of the four policies; ``qkd-only`` and
``qkd-and-pqc`` have none (:func:`meet` returns None: the request is refused).

Provenance: the list of ``{"hop": "<sender>-><receiver>", "source": <HopSource>}`` records a
key's frames crossed, in order (a retried batch may cross a hop twice: both records stay,
so the weakest governs). :func:`satisfies` checks a provenance against a requirement, and
:func:`count_provenance` sums the provenance of a delivered batch per hop and source (what
``key_delivered`` events carry for the ETSI 015 ``keyplane-qkd-provenance`` counters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from keyplane.config import HybridPolicy

__all__ = [
    "PROVENANCE_EXTENSION",
    "HopSource",
    "allowed_sources",
    "count_provenance",
    "hop_record",
    "meet",
    "merge_provenance",
    "needs_pqc",
    "needs_qkd",
    "parse_policy",
    "preferred_sources",
    "provenance_requirement",
    "satisfies",
]

PROVENANCE_EXTENSION = "keyplane_provenance"
"""The ETSI 014 extension name (``key_extension`` of a delivered key; in
``extension_mandatory`` / ``extension_optional`` the required policy)."""


class HopSource(StrEnum):
    """Where one hop's key came from."""

    qkd = "qkd"
    pqc = "pqc"
    combined = "combined"


_ALLOWED: dict[HybridPolicy, frozenset[HopSource]] = {
    p: frozenset(HopSource(x) for x in p.hop_sources) for p in HybridPolicy}

_PREFERENCE: dict[HybridPolicy, tuple[HopSource, ...]] = {
    HybridPolicy.qkd_only: (HopSource.qkd,),
    # "QKD, combined with PQC when available": a combined key is secret if either is
    HybridPolicy.at_least_qkd: (HopSource.combined, HopSource.qkd),
    HybridPolicy.qkd_and_pqc: (HopSource.combined,),
    # QKD while there is QKD key; PQC alone only as the fallback
    HybridPolicy.either: (HopSource.qkd, HopSource.pqc),
}


def parse_policy(value: str | HybridPolicy) -> HybridPolicy:
    """A policy from its wire name.

    Raises:
        ValueError: not one of ``qkd-only``, ``qkd-and-pqc``, ``at-least-qkd``, ``either``.
    """
    return HybridPolicy(value)


def allowed_sources(policy: str | HybridPolicy) -> frozenset[HopSource]:
    """The hop sources ``policy`` accepts."""
    return _ALLOWED[parse_policy(policy)]


def preferred_sources(policy: str | HybridPolicy) -> tuple[HopSource, ...]:
    """The sources a sending KM tries, best first."""
    return _PREFERENCE[parse_policy(policy)]


def needs_qkd(source: HopSource) -> bool:
    """Whether ``source`` consumes QKD link key."""
    return source is not HopSource.pqc


def needs_pqc(source: HopSource) -> bool:
    """Whether ``source`` needs an ML-KEM exchange."""
    return source is not HopSource.qkd


def meet(a: str | HybridPolicy, b: str | HybridPolicy | None) -> HybridPolicy | None:
    """The policy both ``a`` and ``b`` accept (``b`` None: ``a``); None if there is none."""
    pa = parse_policy(a)
    return pa if b is None else pa.meet(b)


def hop_record(sender: str, receiver: str, source: HopSource | str) -> dict[str, str]:
    """One provenance record."""
    return {"hop": f"{sender}->{receiver}", "source": HopSource(source).value}


def merge_provenance(*lists: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """Concatenate provenance lists, dropping exact repeats (order kept)."""
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for records in lists:
        for r in records:
            key = (r["hop"], r["source"])
            if key not in seen:
                seen.add(key)
                out.append({"hop": r["hop"], "source": r["source"]})
    return out


def count_provenance(provenances: Iterable[Iterable[Mapping[str, str]]]
                     ) -> list[dict[str, Any]]:
    """How many keys crossed each hop with each source, over keys in delivery order.

    Args:
        provenances: one provenance list per key, in the order the keys were delivered.

    Returns:
        One entry per hop, in the order the hops were first seen (path order):
        ``{"hop": "km0->km1", "key_count": {"qkd": 2, "pqc": 1}, "last_source": "pqc"}``;
        ``last_source`` is the hop's source in the last key that crossed it. A key that
        crossed a hop with two sources (a retried batch) counts once for each; a record
        repeated within one key counts once.
    """
    hops: dict[str, dict[str, Any]] = {}
    for records in provenances:
        seen: set[tuple[str, str]] = set()
        for r in records:
            hop, source = r["hop"], r["source"]
            entry = hops.setdefault(hop, {"hop": hop, "key_count": {}, "last_source": source})
            entry["last_source"] = source
            if (hop, source) not in seen:
                seen.add((hop, source))
                entry["key_count"][source] = entry["key_count"].get(source, 0) + 1
    return list(hops.values())


def satisfies(provenance: Iterable[Mapping[str, str]], requirement: str | HybridPolicy) -> bool:
    """Whether every hop of ``provenance`` is a source ``requirement`` allows."""
    ok = allowed_sources(requirement)
    records = list(provenance)
    return bool(records) and all(HopSource(r["source"]) in ok for r in records)


def provenance_requirement(extensions: Mapping[str, Any] | None
                           ) -> tuple[HybridPolicy | None, HybridPolicy | None, list[str]]:
    """Read the ETSI 014 ``extensions`` an application sent with enc_keys.

    ``extensions`` is ``{"extension_mandatory": [...], "extension_optional": [...]}``, each a
    list of objects whose member names are parameter names (ETSI 014 clause 6.2); a single
    object instead of a list is accepted too.

    Returns:
        ``(mandatory, optional, unsupported)``: the required ``keyplane_provenance`` policy
        (None if absent), the optional one, and the mandatory names this KM does not know.

    Raises:
        ValueError: a ``keyplane_provenance`` value that is not a policy name.
    """
    def items(kind: str) -> list[tuple[str, Any]]:
        raw = (extensions or {}).get(kind) or []
        objs = [raw] if isinstance(raw, Mapping) else list(raw)
        return [(name, value) for obj in objs if isinstance(obj, Mapping)
                for name, value in obj.items()]

    def policy(value: Any) -> HybridPolicy:
        try:
            return parse_policy(str(value))
        except ValueError:
            raise ValueError(f"{PROVENANCE_EXTENSION} must be one of "
                             f"{[p.value for p in HybridPolicy]}, not {value!r}") from None

    mandatory: HybridPolicy | None = None
    unsupported: list[str] = []
    for name, value in items("extension_mandatory"):
        if name == PROVENANCE_EXTENSION:
            mandatory = policy(value)
        else:
            unsupported.append(name)
    optional = None
    for name, value in items("extension_optional"):
        if name == PROVENANCE_EXTENSION:
            optional = policy(value)
    return mandatory, optional, unsupported
