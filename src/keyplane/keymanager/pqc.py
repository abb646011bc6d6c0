"""Post-quantum hop keys (ML-KEM-768) and the QKD+PQC combiner, for hybrid provisioning.

A hop between two adjacent KMs can take its hop key from the QKD link key stream, from an
ML-KEM-768 encapsulation between the two KMs, or from both combined (issue: hybrid key
provisioning; Lopez et al., QCNC 2024). This module is the cryptographic core; the relay
decides per hop which source to use from the session's hybrid policy.

Authenticated ML-KEM exchange (two messages over the KM-to-KM channel)::

    receiver R                                            sender S
    (dk, ek) = ML-KEM-768.KeyGen()
    Offer{ek, nonce_R, cert_R, sig_R(ctx|ek|nonce_R)}  ─▶  verify cert_R (our CA, KM role,
                                                             subject = expected peer) and sig_R
                                                             (ss, ct) = Encaps(ek)
                                  ◀─  Reply{ct, cert_S, sig_S(ctx|ek|nonce_R|ct)}
    verify cert_S and sig_S; ss = Decaps(dk, ct)

Both sides then derive ``pqc_key = HKDF-SHA-256(ss, salt=H(transcript), info=ctx, L)``. The
KMs' certificates (ECDSA P-256, issued by the network CA by ``keyplane certs``) authenticate
the exchange, so a man in the middle cannot substitute its own encapsulation key.

Combiner (why the result stays secret if either source is)::

    hop_key = qkd_key XOR HKDF-SHA-256(pqc_ss, salt=H(transcript), info=ctx, L=len(qkd_key))

* If the QKD key is secret (uniform and independent of everything the adversary sees), the XOR
  with any independent string is uniform: the hop key is as secret as the QKD key,
  information-theoretically, whatever happens to ML-KEM.
* If the QKD key leaks (e.g. a trusted node or a link is compromised) but ML-KEM holds, the HKDF
  output is pseudorandom (HKDF is a PRF keyed by the shared secret), so the hop key is
  computationally secret.
The two inputs are independent (ML-KEM's secret comes from fresh randomness at the two KMs), which
is what the XOR combiner needs. ``context`` binds the hop, session and key ids, so a combined key
can never be replayed on another hop.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyplane.errors import RelayAuthenticationFailed

__all__ = [
    "KmIdentity",
    "PqcOffer",
    "PqcReceiver",
    "PqcReply",
    "combine_hop_key",
    "derive_pqc_key",
    "pqc_send",
]

_SUITE = b"keyplane/ml-kem-768/ecdsa-p256/hkdf-sha256/v1"
_CERT_CACHE_SIZE = 256


@dataclass(frozen=True)
class KmIdentity:
    """A KM's certificate and signing key, and the CA it trusts for its peers."""

    node_id: str
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    ca_cert: x509.Certificate
    _verified: dict[bytes, x509.Certificate] = field(default_factory=dict, repr=False,
                                                     compare=False)

    @classmethod
    def load(cls, node_id: str, cert_file: str | os.PathLike[str],
             key_file: str | os.PathLike[str], ca_file: str | os.PathLike[str]) -> KmIdentity:
        """Load a KM identity written by ``keyplane certs``."""
        with open(key_file, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("KM key must be an EC private key")
        with open(cert_file, "rb") as fh:
            cert_pem = fh.read()
        with open(ca_file, "rb") as fh:
            ca = x509.load_pem_x509_certificate(fh.read())
        return cls(node_id=node_id, cert_pem=cert_pem, key=key, ca_cert=ca)

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 signature over ``data``."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verify_peer(self, cert_pem: bytes, expected_node: str, data: bytes, sig: bytes) -> None:
        """Check that ``cert_pem`` is a KM certificate of ``expected_node`` issued by our CA,
        valid now, and that ``sig`` signs ``data`` under it.

        A certificate whose CA signature verified once is remembered (by its exact PEM bytes,
        at most ``_CERT_CACHE_SIZE``), so each exchange pays one ECDSA verification per peer
        signature instead of two; name, role and validity are still checked every time.

        Raises:
            RelayAuthenticationFailed: any check fails.
        """
        cert = self._verified.get(cert_pem)
        if cert is None:
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
                ca_pub = self.ca_cert.public_key()
                assert isinstance(ca_pub, ec.EllipticCurvePublicKey)
                sig_hash = cert.signature_hash_algorithm
                assert sig_hash is not None
                ca_pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))
            except (ValueError, InvalidSignature, AssertionError) as exc:
                raise RelayAuthenticationFailed("peer KM certificate not issued by our CA"
                                                ) from exc
            if len(self._verified) >= _CERT_CACHE_SIZE:
                self._verified.clear()
            self._verified[cert_pem] = cert
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise RelayAuthenticationFailed("peer KM certificate is not valid now")
        subject = {a.oid.dotted_string: a.value for a in cert.subject}
        cn = subject.get(x509.NameOID.COMMON_NAME.dotted_string)
        ou = subject.get(x509.NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string)
        if cn != expected_node or ou != "km":
            raise RelayAuthenticationFailed(
                f"peer certificate is for {cn!r}/{ou!r}, expected KM {expected_node!r}")
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise RelayAuthenticationFailed("peer KM key is not ECDSA")
        try:
            pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise RelayAuthenticationFailed("ML-KEM exchange signature does not verify") from exc


@dataclass(frozen=True)
class PqcOffer:
    """Receiver → sender: an ephemeral ML-KEM-768 encapsulation key, signed."""

    context: bytes
    encapsulation_key: bytes
    nonce: bytes
    cert_pem: bytes
    signature: bytes


@dataclass(frozen=True)
class PqcReply:
    """Sender → receiver: the ciphertext, signed over the whole transcript."""

    ciphertext: bytes
    cert_pem: bytes
    signature: bytes


def _offer_tbs(context: bytes, ek: bytes, nonce: bytes) -> bytes:
    return b"|".join((_SUITE, b"offer", context, ek, nonce))


def _reply_tbs(offer: PqcOffer, ct: bytes) -> bytes:
    return b"|".join((_SUITE, b"reply", offer.context, offer.encapsulation_key, offer.nonce, ct))


def _transcript(offer: PqcOffer, ct: bytes) -> bytes:
    return hashlib.sha256(_reply_tbs(offer, ct)).digest()


def derive_pqc_key(shared_secret: bytes, transcript: bytes, context: bytes, length: int) -> bytes:
    """HKDF-SHA-256 of the ML-KEM shared secret, bound to the transcript and the context."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=transcript,
                info=_SUITE + b"|" + context).derive(shared_secret)


class PqcReceiver:
    """The receiving KM's half: makes the offer, then turns the reply into the PQC key."""

    def __init__(self, me: KmIdentity, peer_node: str, context: bytes) -> None:
        self._me = me
        self._peer = peer_node
        self._dk = mlkem.MLKEM768PrivateKey.generate()
        ek = self._dk.public_key().public_bytes_raw()
        nonce = os.urandom(16)
        self.offer = PqcOffer(context=context, encapsulation_key=ek, nonce=nonce,
                              cert_pem=me.cert_pem, signature=me.sign(_offer_tbs(context, ek,
                                                                                 nonce)))

    def finish(self, reply: PqcReply, length: int) -> bytes:
        """Verify the sender and decapsulate.

        Raises:
            RelayAuthenticationFailed: the sender's certificate or signature is wrong.
        """
        self._me.verify_peer(reply.cert_pem, self._peer, _reply_tbs(self.offer, reply.ciphertext),
                             reply.signature)
        try:
            ss = self._dk.decapsulate(reply.ciphertext)
        except ValueError as exc:
            raise RelayAuthenticationFailed("malformed ML-KEM ciphertext") from exc
        return derive_pqc_key(ss, _transcript(self.offer, reply.ciphertext), self.offer.context,
                              length)


def pqc_send(me: KmIdentity, peer_node: str, offer: PqcOffer, length: int
             ) -> tuple[PqcReply, bytes]:
    """The sending KM's half: verify the offer, encapsulate, sign; returns (reply, pqc key).

    Raises:
        RelayAuthenticationFailed: the receiver's certificate or signature is wrong.
    """
    me.verify_peer(offer.cert_pem, peer_node,
                   _offer_tbs(offer.context, offer.encapsulation_key, offer.nonce),
                   offer.signature)
    try:
        ek = mlkem.MLKEM768PublicKey.from_public_bytes(offer.encapsulation_key)
    except ValueError as exc:
        raise RelayAuthenticationFailed("malformed ML-KEM encapsulation key") from exc
    ss, ct = ek.encapsulate()
    reply = PqcReply(ciphertext=ct, cert_pem=me.cert_pem, signature=me.sign(_reply_tbs(offer, ct)))
    return reply, derive_pqc_key(ss, _transcript(offer, ct), offer.context, length)


def combine_hop_key(qkd_key: bytes, pqc_key: bytes) -> bytes:
    """XOR combiner: secret if either input is (see the module docstring).

    ``pqc_key`` must already be the HKDF output of the right length (``derive_pqc_key``).
    """
    if len(qkd_key) != len(pqc_key):
        raise ValueError("combiner inputs must have the same length")
    n = len(qkd_key)
    return (int.from_bytes(qkd_key, "big") ^ int.from_bytes(pqc_key, "big")).to_bytes(n, "big")
