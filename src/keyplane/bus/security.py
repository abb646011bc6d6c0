"""A process's bus identity: its TLS client certificate (who may connect and use which
topics, enforced by nats-server) and its signing key (who may send which state-changing
message, checked by every receiver, :mod:`keyplane.bus.auth`).

:meth:`BusCredentials.for_element` finds both under a certs directory as
:func:`keyplane.certs.ensure_network_certs` lays it out. The only way to run without them is
:meth:`BusSecurity.danger_insecure`, which logs a WARNING: plain TCP, no client
certificate, no signatures.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from keyplane.bus.auth import MessageAuth, Signer, TrustStore
from keyplane.certs import CONTROLLER_ID, OPERATOR_ID, CertPaths, signing_paths
from keyplane.errors import ConfigError

__all__ = ["BusCredentials", "BusSecurity", "inbox_prefix"]

logger = logging.getLogger(__name__)


def inbox_prefix(role: str, element_id: str) -> str:
    """Reply-subject prefix of an element: only it may subscribe below it."""
    return f"_INBOX.{role}.{element_id}"


class BusCredentials(BaseModel):
    """The files that make up one element's bus identity.

    Attributes:
        ca_file: the keyplane CA (trusted for nats-server's certificate and for signers).
        cert_file, key_file: the TLS client certificate nats-server maps to permissions.
        signing_cert_file, signing_key_file: the Ed25519 signing credential (None: this
            element verifies but signs nothing, e.g. a test harness).
        trust_dir: the certs directory whose ``sign/`` holds every signer's certificate
            (None: no end-to-end checks).
        inbox: the element's reply-subject prefix (:func:`inbox_prefix`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path
    cert_file: Path
    key_file: Path
    signing_cert_file: Path | None = None
    signing_key_file: Path | None = None
    trust_dir: Path | None = None
    inbox: str = "_INBOX"

    @classmethod
    def for_element(cls, certs_dir: str | Path, role: str, element_id: str
                    ) -> BusCredentials:
        """The credentials of ``role``/``element_id`` (``km``/node id, ``control``,
        ``operator``) under ``certs_dir``, signing and verifying end to end."""
        base = Path(certs_dir)
        if role == "km":
            tls = CertPaths(base / "km" / f"{element_id}.pem", base / "km" / f"{element_id}.key")
        elif role == "control" and element_id == CONTROLLER_ID:
            tls = CertPaths(base / "controller.pem", base / "controller.key")
        elif role == "operator" and element_id == OPERATOR_ID:
            tls = CertPaths(base / "operator.pem", base / "operator.key")
        else:
            raise ValueError(f"no bus credential for {role}.{element_id}")
        sign = signing_paths(base, role, element_id)
        return cls(ca_file=base / "ca.pem", cert_file=tls.cert, key_file=tls.key,
                   signing_cert_file=sign.cert, signing_key_file=sign.key, trust_dir=base,
                   inbox=inbox_prefix(role, element_id))


@dataclass(frozen=True)
class BusSecurity:
    """What a :class:`~keyplane.bus.nats.NatsBus` needs: TLS context, inbox, message auth.

    ``tls`` None is the insecure bus (only from :meth:`danger_insecure`).
    """

    tls: ssl.SSLContext | None
    inbox: str = "_INBOX"
    auth: MessageAuth | None = None
    credentials: BusCredentials | None = None
    """The files this security was loaded from (a child process, e.g. a link worker, loads
    the same identity from them); None for the insecure bus."""

    @classmethod
    def load(cls, creds: BusCredentials) -> BusSecurity:
        """Build the TLS context and the signer/verifier from ``creds``.

        Raises:
            ConfigError: a file is missing or unreadable, or a key does not match.
        """
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(creds.ca_file))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(creds.cert_file), str(creds.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"bus TLS credential {creds.cert_file}: {exc}") from exc
        auth: MessageAuth | None = None
        if creds.trust_dir is not None:
            signer = None
            if creds.signing_cert_file is not None and creds.signing_key_file is not None:
                signer = Signer.load(creds.signing_cert_file, creds.signing_key_file)
            auth = MessageAuth(signer, TrustStore(creds.ca_file, creds.trust_dir))
        return cls(tls=ctx, inbox=creds.inbox, auth=auth, credentials=creds)

    @classmethod
    def danger_insecure(cls, reason: str = "") -> BusSecurity:
        """No TLS, no client certificate, no signatures. Logs a WARNING: anyone who reaches
        the server can read every message and forge any of them."""
        logger.warning("DANGER: insecure bus (no TLS, no client certificate, no message "
                       "signatures)%s; anyone who reaches the bus server can read and forge "
                       "every message", f": {reason}" if reason else "")
        return cls(tls=None)

    @property
    def secure(self) -> bool:
        """Whether the connection uses TLS with a client certificate."""
        return self.tls is not None
