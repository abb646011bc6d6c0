"""Certificates for mutual TLS: a CA, a server certificate per KM, a client one per SAE.

``keyplane certs`` and ``keyplane run`` (on first start) write, under ``<dir>/certs``::

    ca.pem ca.key                      the network's CA (keep ca.key offline in production)
    km/<node>.pem  km/<node>.key       server cert of each KM (SAN: localhost, 127.0.0.1,
                                       the node's address); also its client cert for KM-KM
    km/<node>.kek                      the KM's key-encryption key: key material in the
                                       database is sealed under it (keyplane.store.sealing)
    sae/<sae>.pem  sae/<sae>.key       client cert of each SAE; subject = its owner's
                                       certificate_subject, so Access Control finds the user
    controller.pem controller.key      the SDN Controller's client cert (ETSI 015)

Keys are ECDSA P-256; certificates are valid for ``days`` (default 825). Existing files are
kept (idempotent), so restarting ``keyplane run`` never changes identities. Every file is
written ``0600`` and every folder ``0700`` (:mod:`keyplane.fileperms`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from keyplane.config import Topology
from keyplane.fileperms import ensure_private_dir, write_private

__all__ = [
    "CertPaths",
    "Issued",
    "client_ssl_context",
    "ensure_network_certs",
    "load_network_certs",
    "peer_subject",
    "server_ssl_context",
]


@dataclass(frozen=True)
class CertPaths:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Issued:
    """Everything ``ensure_network_certs`` made or found."""

    ca: CertPaths
    kms: dict[str, CertPaths]
    saes: dict[str, CertPaths]
    controller: CertPaths
    keks: dict[str, Path] = field(default_factory=dict)
    """Each KM's key-encryption key file, by node."""


def _name(subject: str) -> x509.Name:
    """Parse an RFC 4514 string (``CN=alice,O=org``) into an X.509 Name."""
    return x509.Name.from_rfc4514_string(subject)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def _load_ca(paths: CertPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _make_ca(paths: CertPaths, name: str, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"CN={name} CA,O=keyplane")
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(paths.key, key)
    write_private(paths.cert, cert.public_bytes(serialization.Encoding.PEM))


def _issue(ca: CertPaths, paths: CertPaths, subject: str, *, server_names: list[str],
           client: bool, server: bool, days: int) -> None:
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(paths.key, key)
    write_private(paths.cert, cert.public_bytes(serialization.Encoding.PEM))


def ensure_network_certs(topology: Topology, directory: str | Path, *, days: int = 825
                         ) -> Issued:
    """Create (once) the CA, every KM, SAE and controller certificate of ``topology`` and
    each KM's key-encryption key.

    A folder with the CA certificate but not its key belongs to one deployed element (a
    Kubernetes pod gets only its own credentials, never ``ca.key``): nothing is issued
    there, see :func:`load_network_certs`.
    """
    from keyplane.store.sealing import ensure_kek_file  # the store's stack, only when used

    base = Path(directory)
    if (base / "ca.pem").exists() and not (base / "ca.key").exists():
        return load_network_certs(topology, base)
    base = ensure_private_dir(directory)
    ca = CertPaths(base / "ca.pem", base / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        _make_ca(ca, topology.name, days)
    kms: dict[str, CertPaths] = {}
    keks: dict[str, Path] = {}
    for node in topology.nodes:
        p = CertPaths(base / "km" / f"{node.id}.pem", base / "km" / f"{node.id}.key")
        if not (p.cert.exists() and p.key.exists()):
            names = sorted({"localhost", "127.0.0.1", node.address, node.id})
            _issue(ca, p, f"CN={node.id},OU=km,O=keyplane", server_names=names, client=True,
                   server=True, days=days)
        kms[node.id] = p
        ensure_kek_file(keks.setdefault(node.id, base / "km" / f"{node.id}.kek"))
    saes: dict[str, CertPaths] = {}
    for app in topology.applications:
        owner = topology.user(app.owner)
        subject = owner.certificate_subject or f"CN={owner.id},O=keyplane"
        p = CertPaths(base / "sae" / f"{app.sae_id}.pem", base / "sae" / f"{app.sae_id}.key")
        if not (p.cert.exists() and p.key.exists()):
            _issue(ca, p, subject, server_names=[], client=True, server=False, days=days)
        saes[app.sae_id] = p
    ctl = CertPaths(base / "controller.pem", base / "controller.key")
    if not (ctl.cert.exists() and ctl.key.exists()):
        _issue(ca, ctl, "CN=sdn-controller,OU=control,O=keyplane", server_names=["localhost",
               "127.0.0.1"], client=True, server=True, days=days)
    return Issued(ca=ca, kms=kms, saes=saes, controller=ctl, keks=keks)


def load_network_certs(topology: Topology, directory: str | Path) -> Issued:
    """Where ``topology``'s credentials are under ``directory``, issuing nothing.

    For a process that holds only its own files (``ca.pem``, its certificate and key, its
    KEK): the paths of the others are returned as they would be laid out and may not exist;
    only existing KEK files are listed. Using a missing one fails where it is opened.
    """
    base = Path(directory)
    return Issued(
        ca=CertPaths(base / "ca.pem", base / "ca.key"),
        kms={n.id: CertPaths(base / "km" / f"{n.id}.pem", base / "km" / f"{n.id}.key")
             for n in topology.nodes},
        saes={a.sae_id: CertPaths(base / "sae" / f"{a.sae_id}.pem",
                                  base / "sae" / f"{a.sae_id}.key")
              for a in topology.applications},
        controller=CertPaths(base / "controller.pem", base / "controller.key"),
        keks={n.id: base / "km" / f"{n.id}.kek" for n in topology.nodes
              if (base / "km" / f"{n.id}.kek").exists()})


def server_ssl_context(cert: CertPaths, ca_file: Path, *, require_client_cert: bool = True
                       ) -> ssl.SSLContext:
    """TLS >= 1.2 server context that (by default) requires a client cert from our CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_ssl_context(cert: CertPaths, ca_file: Path) -> ssl.SSLContext:
    """TLS >= 1.2 client context presenting ``cert`` and trusting only our CA."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def peer_subject(der_cert: bytes) -> str:
    """RFC 4514 subject of a peer certificate in DER (what Access Control looks up)."""
    return x509.load_der_x509_certificate(der_cert).subject.rfc4514_string()
