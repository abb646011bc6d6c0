"""The topology file's users, their SLA profiles and their applications.

These are the paper's user/SLA database as the topology file declares it: who owns which
application (SAE), what each user's sessions may ask for, and how their hop keys may
combine QKD and ML-KEM. Access and Admission Control read them; :mod:`keyplane.config`
(which re-exports every name) embeds them in the :class:`~keyplane.config.Topology`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Application", "ApplicationQos", "HybridPolicy", "SlaProfile", "User"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class HybridPolicy(StrEnum):
    """How a user's hop keys may combine QKD and ML-KEM (issue: hybrid provisioning).

    Each policy accepts a set of hop key sources (``qkd``, ``pqc``, ``combined``; see
    docs/hybrid.md): qkd-only {qkd}, at-least-qkd {qkd, combined}, qkd-and-pqc {combined},
    either {qkd, pqc, combined}. Two policies compose by intersecting those sets.
    """

    qkd_only = "qkd-only"
    qkd_and_pqc = "qkd-and-pqc"
    at_least_qkd = "at-least-qkd"
    either = "either"

    @property
    def hop_sources(self) -> frozenset[str]:
        """The hop key sources this policy accepts."""
        return _HOP_SOURCES[self]

    @property
    def allows_pqc_alone(self) -> bool:
        """Whether a hop without QKD key may still serve (ML-KEM alone)."""
        return "pqc" in self.hop_sources

    def meet(self, other: HybridPolicy | str) -> HybridPolicy | None:
        """The policy both accept (e.g. the two users of a session); None if none."""
        both = self.hop_sources & HybridPolicy(other).hop_sources
        return next((p for p in HybridPolicy if p.hop_sources == both), None)


_HOP_SOURCES: dict[HybridPolicy, frozenset[str]] = {
    HybridPolicy.qkd_only: frozenset({"qkd"}),
    HybridPolicy.qkd_and_pqc: frozenset({"combined"}),
    HybridPolicy.at_least_qkd: frozenset({"qkd", "combined"}),
    HybridPolicy.either: frozenset({"qkd", "pqc", "combined"}),
}


class ApplicationQos(_Model):
    """One application's QoS profile within its owner's SLA (issue #17.2).

    ETSI 014 carries no QoS in its requests, so a session opened by an ETSI 014 master
    runs with its application's profile; an ETSI 004 OPEN_CONNECT's own QoS takes
    precedence for the fields it sets (``max_bps``/``min_bps`` 0: the profile's). Unset
    fields fall back to the SLA's; every value is capped by the SLA (checked on load).
    """

    priority: Annotated[int, Field(ge=0, le=7)] | None = None
    """0 (lowest) to 7, at most the SLA's (unset: the SLA's)."""
    max_bps: Annotated[int, Field(ge=0)] | None = None
    """Key rate ceiling of the application's sessions, bit/s, at most the SLA's (unset: the
    SLA's)."""
    min_bps: Annotated[int, Field(ge=0)] | None = None
    """Key rate reserved on every link of its sessions' paths, bit/s (at least the SLA's)."""
    timeout_ms: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    """How long a key request may wait for key, ms (the ETSI 004 QoS ``Timeout``; unset:
    the key manager's own setting)."""


class SlaProfile(_Model):
    """What a user is entitled to (the paper's user/SLA database).

    ``applications`` gives some of the user's applications (by SAE id) their own QoS
    profile below the SLA: a user runs more and less critical applications.
    """

    max_sessions: Annotated[int, Field(ge=0)] = 4
    """Live sessions the user may hold at once."""
    max_bps: Annotated[int, Field(ge=0)] = 1_000_000
    """Highest key rate one session of this user may ask for, bit/s."""
    min_bps: Annotated[int, Field(ge=0)] = 0
    """Key rate reserved on every link of the user's session paths, bit/s."""
    priority: Annotated[int, Field(ge=0, le=7)] = 0
    """0 (lowest) to 7: the highest priority the user's sessions may have."""
    allowed_peers: list[str] = Field(default_factory=lambda: ["*"])
    """SAE ids the user's applications may get keys with (``*``: any)."""
    idle_timeout_s: Annotated[float, Field(gt=0.0)] = 60.0
    """A session without a key request for this long is closed, s."""
    hybrid_policy: HybridPolicy = HybridPolicy.qkd_only
    """How hop keys may combine QKD and ML-KEM (docs/hybrid.md)."""
    max_trusted_relays: Annotated[int, Field(ge=0)] | None = None
    """At most this many trusted relays (intermediate key managers, which see the key) on
    a session's path; 0: only a single link, e.g. measurement-assisted (unset: no cap;
    docs/quantum-networking.md)."""
    applications: dict[str, ApplicationQos] = Field(default_factory=dict)
    """Per-application QoS profiles below this SLA, by SAE id (one of the user's
    applications): priority, rates and wait bound its sessions get (docs/control.md,
    "Per-application QoS")."""

    @model_validator(mode="after")
    def _check(self) -> SlaProfile:
        if self.min_bps > self.max_bps:
            raise ValueError("min_bps must not exceed max_bps")
        for sae, app in self.applications.items():
            for name in ("priority", "max_bps"):
                value, cap = getattr(app, name), getattr(self, name)
                if value is not None and value > cap:
                    raise ValueError(f"applications.{sae}.{name} {value} above the SLA's {cap}")
            top = app.max_bps if app.max_bps is not None else self.max_bps
            if app.min_bps is not None and app.min_bps > top:
                raise ValueError(f"applications.{sae}.min_bps {app.min_bps} above its "
                                 f"max_bps {top}")
        return self

    def application(self, sae_id: str) -> ApplicationQos:
        """The profile of one of the user's applications (empty: the SLA's values)."""
        return self.applications.get(sae_id) or _NO_PROFILE

    def allows_peer(self, sae_id: str) -> bool:
        """Whether this profile may reach ``sae_id`` (``"*"`` allows every SAE)."""
        return "*" in self.allowed_peers or sae_id in self.allowed_peers


_NO_PROFILE = ApplicationQos()


class User(_Model):
    """A user (owner of applications), identified by a certificate subject or a token."""

    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    """User id (owner of applications)."""
    certificate_subject: str | None = None
    """Subject of the user's TLS client certificate (RFC 4514, e.g. ``CN=alice,O=example``): the
    identity the KMs authenticate. A user who owns applications needs one."""
    token: str | None = Field(default=None, repr=False)
    """Deprecated bearer token (kept for old files; never an identity on its own)."""
    sla: SlaProfile = SlaProfile()
    """The user's SLA profile."""


class Application(_Model):
    """A secure application entity (SAE) attached to a node's key manager."""

    sae_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    """The application's SAE id (ETSI 004/014)."""
    owner: str
    """The user who owns it (a ``users[].id``)."""
    node: str
    """The node whose key manager serves it."""
