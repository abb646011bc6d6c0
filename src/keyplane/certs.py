"""Certificates for mutual TLS and bus message signing, all issued by one keyplane CA.

``keyplane certs`` and ``keyplane run`` (on first start) write, under ``<dir>/certs``::

    ca.pem ca.key                      the network's CA (keep ca.key offline in production)
    km/<node>.pem  km/<node>.key       server cert of each KM (SAN: localhost, 127.0.0.1,
                                       the node's address); also its client cert for KM-KM
                                       and its bus (NATS) credential
    km/<node>.kek                      the KM's key-encryption key: key material in the
                                       database is sealed under it (keyplane.store.sealing)
    sae/<sae>.pem  sae/<sae>.key       client cert of each SAE; subject = its owner's
                                       certificate_subject, so Access Control finds the user
    controller.pem controller.key      the control plane's client cert (ETSI 015, bus)
    operator.pem operator.key          an operator's bus credential (``keyplane link ...``)
    nats/server.pem nats/server.key    nats-server's TLS certificate (SAN: localhost,
                                       127.0.0.1 and any ``bus_hosts``)
    sign/<role>.<id>.pem / .key        Ed25519 message-signing certificate of each element
                                       (km.<node>, control.sdn-controller, operator.operator)

TLS keys are ECDSA P-256; signing keys are Ed25519 and separate from the TLS keys, so a
stolen bus credential alone cannot sign (docs/security.md, "The bus"). Certificates are valid
for ``days`` (default 825). Existing files are kept (idempotent), so restarting
``keyplane run`` never changes identities. Every file is written ``0600`` and every folder
``0700`` (:mod:`keyplane.fileperms`).

Subjects: ``CN=<id>,OU=<role>,O=keyplane`` for elements (role ``km``, ``control`` or
``operator``); the bus maps a TLS subject to its permissions and a signing certificate's
(OU, CN) to the signer's role and id.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from keyplane.fileperms import ensure_private_dir, write_private

if TYPE_CHECKING:  # the client SDK imports this module: it stays free of the config models
    from keyplane.config import Topology

__all__ = [
    "CONTROLLER_ID",
    "OPERATOR_ID",
    "CertPaths",
    "Issued",
    "client_ssl_context",
    "element_subject",
    "ensure_client_cert",
    "ensure_device_cert",
    "ensure_network_certs",
    "load_network_certs",
    "peer_subject",
    "server_ssl_context",
    "signing_paths",
]

CONTROLLER_ID = "sdn-controller"
"""Common name of the control plane's certificates (every control-plane process uses them)."""
OPERATOR_ID = "operator"
"""Common name of the operator's bus credential (``keyplane link ...``)."""


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
    operator: CertPaths | None = None
    nats_server: CertPaths | None = None
    signing: dict[str, CertPaths] = field(default_factory=dict)
    """Ed25519 signing certificates by signer id (``km.<node>``, ``control.<id>``, ...)."""


def element_subject(role: str, element_id: str) -> str:
    """RFC 4514 subject of an element's certificates: ``CN=<id>,OU=<role>,O=keyplane``."""
    return f"CN={element_id},OU={role},O=keyplane"


def signing_paths(base: str | Path, role: str, element_id: str) -> CertPaths:
    """Where the signing certificate of ``role``/``element_id`` lives under a certs dir."""
    d = Path(base) / "sign"
    return CertPaths(d / f"{role}.{element_id}.pem", d / f"{role}.{element_id}.key")


def _name(subject: str) -> x509.Name:
    """Parse an RFC 4514 string (``CN=alice,O=org``) into an X.509 Name."""
    return x509.Name.from_rfc4514_string(subject)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
               ) -> None:
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


def _issue_signing(ca: CertPaths, paths: CertPaths, subject: str, *, days: int) -> None:
    """An Ed25519 certificate for bus message signatures only (digitalSignature, no EKU)."""
    ca_cert, ca_key = _load_ca(ca)
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(subject))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(paths.key, key)
    write_private(paths.cert, cert.public_bytes(serialization.Encoding.PEM))


def _ensure_signing(ca: CertPaths, base: Path, role: str, element_id: str, days: int
                    ) -> CertPaths:
    p = signing_paths(base, role, element_id)
    if not (p.cert.exists() and p.key.exists()):
        _issue_signing(ca, p, element_subject(role, element_id), days=days)
    return p


def ensure_network_certs(topology: Topology, directory: str | Path, *, days: int = 825,
                         bus_hosts: tuple[str, ...] = ()) -> Issued:
    """Create (once) the CA and every certificate of ``topology``: KMs (and each KM's
    key-encryption key), SAEs, controller, operator, nats-server (SANs: localhost, 127.0.0.1
    and ``bus_hosts``) and each element's Ed25519 bus signing certificate.

    A folder with the CA certificate but not its key belongs to one deployed element (a
    Kubernetes pod gets only its own credentials, never ``ca.key``): nothing is issued
    there, see :func:`load_network_certs`.
    """
    from keyplane.store.sealing import ensure_kek_file  # the store's stack, only when used

    if (Path(directory) / "ca.pem").exists() and not (Path(directory) / "ca.key").exists():
        return load_network_certs(topology, directory)
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
            _issue(ca, p, element_subject("km", node.id), server_names=names, client=True,
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
        _issue(ca, ctl, element_subject("control", CONTROLLER_ID),
               server_names=["localhost", "127.0.0.1"], client=True, server=True, days=days)
    op = CertPaths(base / "operator.pem", base / "operator.key")
    if not (op.cert.exists() and op.key.exists()):
        _issue(ca, op, element_subject("operator", OPERATOR_ID), server_names=[], client=True,
               server=False, days=days)
    signing = {f"km.{node.id}": _ensure_signing(ca, base, "km", node.id, days)
               for node in topology.nodes}
    signing[f"control.{CONTROLLER_ID}"] = _ensure_signing(ca, base, "control", CONTROLLER_ID,
                                                          days)
    signing[f"operator.{OPERATOR_ID}"] = _ensure_signing(ca, base, "operator", OPERATOR_ID,
                                                         days)
    nats = CertPaths(base / "nats" / "server.pem", base / "nats" / "server.key")
    if not (nats.cert.exists() and nats.key.exists()):
        _issue(ca, nats, "CN=nats-server,OU=bus,O=keyplane",
               server_names=sorted({"localhost", "127.0.0.1", *bus_hosts}), client=False,
               server=True, days=days)
    return Issued(ca=ca, kms=kms, saes=saes, controller=ctl, keks=keks, operator=op,
                  nats_server=nats, signing=signing)


def ensure_client_cert(directory: str | Path, name: str, subject: str, *, days: int = 825
                       ) -> CertPaths:
    """Create (once) ``<directory>/<name>.{pem,key}``: a client certificate of the network's
    CA (which must exist) for ``subject`` (e.g. a monitoring tool's bus credential)."""
    base = Path(directory)
    ca = CertPaths(base / "ca.pem", base / "ca.key")
    p = CertPaths(base / f"{name}.pem", base / f"{name}.key")
    if not (p.cert.exists() and p.key.exists()):
        _issue(ca, p, subject, server_names=[], client=True, server=False, days=days)
    return p


def ensure_device_cert(directory: str | Path, name: str, *, host: str = "127.0.0.1",
                       days: int = 825) -> CertPaths:
    """Create (once) the server certificate of a QKD device end (``keyplane device``) under
    ``<directory>/device/``, signed by the network CA already in ``directory``.

    Raises:
        FileNotFoundError: ``directory`` holds no CA (run :func:`ensure_network_certs`).
    """
    base = Path(directory)
    ca = CertPaths(base / "ca.pem", base / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        raise FileNotFoundError(f"no CA under {base}: run 'keyplane certs' first")
    p = CertPaths(base / "device" / f"{name}.pem", base / "device" / f"{name}.key")
    if not (p.cert.exists() and p.key.exists()):
        _issue(ca, p, f"CN={name},OU=qkd-device,O=keyplane",
               server_names=sorted({"localhost", "127.0.0.1", host}), client=True, server=True,
               days=days)
    return p


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
              if (base / "km" / f"{n.id}.kek").exists()},
        operator=CertPaths(base / "operator.pem", base / "operator.key"),
        nats_server=CertPaths(base / "nats" / "server.pem", base / "nats" / "server.key"),
        signing={f"{role}.{eid}": signing_paths(base, role, eid)
                 for role, eid in [*(("km", n.id) for n in topology.nodes),
                                   ("control", CONTROLLER_ID), ("operator", OPERATOR_ID)]})


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
