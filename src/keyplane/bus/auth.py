"""End-to-end authentication of state-changing bus messages, once, in the envelope layer.

TLS client certificates and per-element subject permissions (:mod:`keyplane.bus.natsconf`)
decide who may talk on which topic. On top of that, every message kind in :data:`POLICY`
travels signed, so that a stolen bus credential alone cannot forge a SessionConfig, an
Access Control answer or a relay frame: the signing key is a separate Ed25519 key that the
keyplane CA certified for one element (``sign/<role>.<id>.pem`` in the certs directory,
:func:`keyplane.certs.ensure_network_certs`).

Wire form (the plain envelope of :mod:`keyplane.bus.codec` with one more member)::

    {"kind":"km.session_config","v":1,"body":{...},
     "sig":{"by":"control.sdn-controller","kid":"<16 hex>","s":"<base64 Ed25519>"}}

The signature covers ``DOMAIN || binding || 0x00 || envelope-bytes-before-,"sig"``: the exact
bytes sent, so there is no canonicalisation to get wrong. The *binding* ties a message to
where it goes: ``t:<topic>`` for a publish or a request (a SessionConfig for km2 cannot be
replayed to km3), ``r:<SHA-256 of the request bytes>`` for a reply (an old "ok" from Access
Control cannot answer a new request). ``by`` is ``<role>.<id>`` (the certificate's OU and
CN); ``kid`` names the public key so a rotated certificate is picked up without a restart.

Decisions (:meth:`MessageAuth.open`), in order: kinds outside :data:`POLICY` pass (signed or
not); a policy kind must carry a signature of a signer the trust store knows (its
certificate was issued by the keyplane CA, is valid now, has an Ed25519 key and the
digitalSignature usage), of a role the rule allows, and whose id matches the body field the
rule names (a KM may only speak for itself). Anything else raises
:class:`~keyplane.errors.MessageRejected`. Replays within a topic are not detected here; the
messages' own ids and epochs make a replay a no-op (docs/security.md lists what remains).

The embedded mode (:class:`~keyplane.bus.memory.MemoryBus`) does not sign: every element
shares one process and one memory, there is no wire to forge on.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from keyplane.bus.codec import Message, decode, encode
from keyplane.errors import ConfigError, MessageRejected

__all__ = [
    "DOMAIN",
    "POLICY",
    "ROLES",
    "MessageAuth",
    "Rejected",
    "Rule",
    "Signer",
    "TrustStore",
    "TrustedSigner",
    "reply_binding",
    "split_signature",
    "topic_binding",
]

logger = logging.getLogger(__name__)

DOMAIN = b"keyplane-bus-signature-v1\x00"
"""Prefix of every signed byte string (domain separation from any other use of the key)."""

ROLES = frozenset({"km", "control", "operator"})
"""Signer roles: a certificate's OU."""


@dataclass(frozen=True)
class Rule:
    """Who may send one message kind.

    Attributes:
        roles: signer roles allowed to send it.
        identity_field: a body field that must equal the signer's id (the KM that claims
            ``node="km2"`` or ``sender="km2"`` must be km2), or None.
    """

    roles: frozenset[str]
    identity_field: str | None = None


_CONTROL = Rule(frozenset({"control"}))


def _km(field: str | None) -> Rule:
    return Rule(frozenset({"km"}), field)


POLICY: dict[str, Rule] = {
    # control plane -> KMs (paper Fig. 2b) and its answers to them
    "km.session_config": _CONTROL,
    "km.session_delete": _CONTROL,
    "access.auth_response": _CONTROL,
    "admission.open_ack": _CONTROL,
    "sdn.node_welcome": _CONTROL,
    # control-plane orders on the Admission Control topic, where KMs may publish too
    "control.reroute_order": _CONTROL,
    "control.live_sessions_request": _CONTROL,
    # KM -> control plane: a KM speaks only for its own node
    "access.auth_request": _km("node"),
    "admission.open": _km("node"),
    "admission.keepalive": _km("node"),
    "admission.close": _km("node"),
    "admission.km_ready": _km("node"),
    "km.config_ack": _km("node"),
    "km.delete_confirm": _km("node"),
    "sdn.node_announcement": _km("node"),
    # KM -> KM relay (trusted-node key relay) and link block holdings
    "km.relay.key": _km("sender"),
    "km.relay.confirm": _km("sender"),
    "km.relay.demand": _km("sender"),
    "km.relay.pqc_offer_request": _km("sender"),
    "km.relay.pqc_offer": _km(None),
    "km.link.held": _km("sender"),
    "km.session.probe": _km("sender"),
    "km.session.probe_reply": _km(None),
    # the entanglement service (docs/quantum-networking.md): a KM forwards its
    # applications' demands for its own node only; demands and deliveries otherwise come
    # from the control plane
    "control.node_entanglement_request": _km("node"),
    "control.entanglement_request": _CONTROL,
    "control.entanglement_delivery": _CONTROL,
    # operators (and the control plane) drive link faults
    "qkd.link_command": Rule(frozenset({"operator", "control"})),
}
"""Message kind -> who may send it. Every kind here is signed by its sender and verified by
its receiver; a kind not listed travels as it is."""


class Rejected(Message):
    """The bus layer's answer to a request it refused (the requester raises
    :class:`~keyplane.errors.MessageRejected` at once instead of timing out)."""

    KIND = "bus.rejected"

    kind: str
    reason: str


def topic_binding(topic: str) -> bytes:
    """Binding of a publish or request: its topic."""
    return b"t:" + topic.encode()


def reply_binding(request: bytes) -> bytes:
    """Binding of a reply: the digest of the exact request bytes it answers."""
    return b"r:" + hashlib.sha256(request).digest()


def _kid(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _role_and_id(cert: x509.Certificate) -> tuple[str, str]:
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(ous) != 1 or len(cns) != 1:
        raise ValueError("a signing certificate needs exactly one OU and one CN")
    return str(ous[0].value), str(cns[0].value)


_SIG_HEAD = b',"sig":{"by":"'
_SIG_TAIL = re.compile(
    rb',"sig":\{"by":"([a-z]+\.[A-Za-z0-9_\-]{1,64})","kid":"([0-9a-f]{16})",'
    rb'"s":"([A-Za-z0-9+/]{86}==)"\}\}')


def split_signature(data: bytes) -> tuple[bytes, tuple[str, str, bytes] | None]:
    """Split a wire envelope into (the plain envelope, (by, kid, signature) or None).

    Raises:
        MessageRejected: a ``"sig"`` member is there but not in the exact signed form.
    """
    i = data.rfind(_SIG_HEAD)
    if i < 0:
        return data, None
    m = _SIG_TAIL.fullmatch(data, i)
    if m is None:
        raise MessageRejected("?", "malformed signature")
    return data[:i] + b"}", (m.group(1).decode(), m.group(2).decode(),
                             base64.b64decode(m.group(3)))


class Signer:
    """This element's signing key and its name on the wire (``<role>.<id>``)."""

    def __init__(self, role: str, element_id: str, key: ed25519.Ed25519PrivateKey) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown signer role {role!r}")
        self.role = role
        self.element_id = element_id
        self.by = f"{role}.{element_id}"
        self._key = key
        self.kid = _kid(key.public_key())
        self._tail = (f',"sig":{{"by":"{self.by}","kid":"{self.kid}","s":"').encode()

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> Signer:
        """Load a signing certificate and its key (role and id from the certificate).

        Raises:
            ConfigError: unreadable files, not an Ed25519 key, or key and certificate differ.
        """
        try:
            cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
            role, element_id = _role_and_id(cert)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"signing credential {cert_file}: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{key_file}: a bus signing key must be Ed25519")
        if _kid(key.public_key()) != _kid(_ed25519_of(cert)):
            raise ConfigError(f"{key_file} does not belong to {cert_file}")
        return cls(role, element_id, key)

    def seal(self, envelope: bytes, binding: bytes) -> bytes:
        """``envelope`` (a plain :func:`~keyplane.bus.codec.encode` output) with its
        signature member."""
        prefix = envelope[:-1]
        sig = self._key.sign(DOMAIN + binding + b"\x00" + prefix)
        return prefix + self._tail + base64.b64encode(sig) + b'"}}'


def _ed25519_of(cert: x509.Certificate) -> ed25519.Ed25519PublicKey:
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("not an Ed25519 certificate")
    return key


@dataclass(frozen=True)
class TrustedSigner:
    """A signing certificate the trust store accepted: who (role, id) and its key."""

    role: str
    element_id: str
    kid: str
    key: ed25519.Ed25519PublicKey
    not_after: dt.datetime


class TrustStore:
    """The signing certificates of a network, each checked against the keyplane CA.

    Reads ``<directory>/sign/*.pem`` (the layout :mod:`keyplane.certs` writes; a deployment
    mounts the public certificates there). A certificate that is not issued by the CA,
    expired, not Ed25519 or without the digitalSignature usage is ignored (and logged). An
    unknown signer or key id makes it read the directory again, at most once per
    ``rescan_interval_s``.
    """

    def __init__(self, ca_file: Path, directory: Path, *, rescan_interval_s: float = 5.0
                 ) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"CA certificate {ca_file}: {exc}") from exc
        self._dir = Path(directory) / "sign"
        self._rescan_interval_s = rescan_interval_s
        self._known: dict[str, TrustedSigner] = {}
        self._scanned_at: float | None = None
        self._lock = threading.Lock()
        self._scan()

    def _check(self, cert: x509.Certificate) -> TrustedSigner:
        cert.verify_directly_issued_by(self._ca)
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ValueError("outside its validity period")
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise ValueError("no digitalSignature key usage")
        role, element_id = _role_and_id(cert)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        key = _ed25519_of(cert)
        return TrustedSigner(role, element_id, _kid(key), key, cert.not_valid_after_utc)

    def _scan(self) -> None:
        found: dict[str, TrustedSigner] = {}
        for path in sorted(self._dir.glob("*.pem")) if self._dir.is_dir() else []:
            try:
                known = self._check(x509.load_pem_x509_certificate(path.read_bytes()))
            except (OSError, ValueError, TypeError, InvalidSignature,
                    x509.ExtensionNotFound) as exc:
                logger.warning("ignoring signing certificate %s: %s", path, exc)
                continue
            found[f"{known.role}.{known.element_id}"] = known
        with self._lock:
            self._known = found
            self._scanned_at = time.monotonic()

    def add(self, cert_pem: bytes) -> str:
        """Trust one more signing certificate (checked like the directory's); its ``by``.

        Raises:
            ValueError: the certificate does not pass the checks.
        """
        try:
            known = self._check(x509.load_pem_x509_certificate(cert_pem))
        except (InvalidSignature, TypeError, x509.ExtensionNotFound) as exc:
            raise ValueError(f"untrusted signing certificate: {exc!r}") from exc
        by = f"{known.role}.{known.element_id}"
        with self._lock:
            self._known[by] = known
        return by

    def lookup(self, by: str, kid: str) -> TrustedSigner | None:
        """The trusted key of signer ``by`` with key id ``kid``, or None."""
        known = self._known.get(by)
        if known is not None and known.kid == kid:
            return known
        scanned = self._scanned_at
        if scanned is None or time.monotonic() - scanned >= self._rescan_interval_s:
            self._scan()
            known = self._known.get(by)
            if known is not None and known.kid == kid:
                return known
        return None

    def __len__(self) -> int:
        return len(self._known)


class MessageAuth:
    """Sign what this element sends and check what it receives, by :data:`POLICY`.

    Args:
        signer: this element's signing key (None: it sends nothing that needs one).
        trust: the network's signing certificates.
        policy: kind -> rule (default :data:`POLICY`).
    """

    def __init__(self, signer: Signer | None, trust: TrustStore,
                 policy: dict[str, Rule] | None = None) -> None:
        self.signer = signer
        self.trust = trust
        self.policy = POLICY if policy is None else policy

    def seal(self, msg: Message, binding: bytes) -> bytes:
        """The wire bytes of ``msg``: signed when its kind is in the policy."""
        data = encode(msg)
        if self.signer is not None and msg.KIND in self.policy:
            return self.signer.seal(data, binding)
        return data

    def open(self, data: bytes, binding: bytes) -> tuple[Message, str | None]:
        """Decode ``data`` and check its signature against the policy.

        Returns:
            the message and the signer (``<role>.<id>``) when it was signed and checked.

        Raises:
            MessageDecodeError: not a keyplane envelope.
            MessageRejected: a policy kind without an acceptable signature.
        """
        plain, sig = split_signature(data)
        msg = decode(plain)
        rule = self.policy.get(msg.KIND)
        if rule is None:
            return msg, None
        if sig is None:
            raise MessageRejected(msg.KIND, "not signed")
        by, kid, signature = sig
        known = self.trust.lookup(by, kid)
        if known is None:
            raise MessageRejected(msg.KIND, f"unknown signer {by!r} (key {kid})")
        if known.role not in rule.roles:
            raise MessageRejected(msg.KIND, f"a {known.role} may not send it (signer {by!r})")
        try:
            known.key.verify(signature, DOMAIN + binding + b"\x00" + plain[:-1])
        except InvalidSignature:
            raise MessageRejected(msg.KIND, f"bad signature (claimed signer {by!r})") from None
        if rule.identity_field is not None:
            claimed = getattr(msg, rule.identity_field, None)
            if claimed != known.element_id:
                raise MessageRejected(
                    msg.KIND, f"{rule.identity_field}={claimed!r} but signed by {by!r}")
        return msg, by
