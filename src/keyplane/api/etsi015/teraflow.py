"""Letting an unmodified TeraFlowSDN manage keyplane nodes, without weakening the default.

What TeraFlowSDN's QKD driver can send (``src/device/service/drivers/qkd/QKDDriver2.py`` and
``Tools2.py``, read at the commit in docs/interop.md): ``requests`` calls to
``http://<address>:<port>/restconf/data/etsi-qkd-sdn-node:qkd_node…`` with ``verify=False``,
optional extra headers on its reads only, and an ``auth`` object it never builds from its
JSON device settings. It cannot present a client certificate, so it cannot reach the mTLS
listener every node serves. ``requests`` itself, though, sends HTTP Basic credentials found
in the URL (a device address ``user:password@10.0.0.1``) or in a ``.netrc`` file, on every
request, writes included.

So a node can run a second listener for it (:func:`serve_teraflowsdn`, configured per
deployment by the topology's ``etsi015.teraflowsdn``): it asks every request for HTTP Basic
credentials from a file (RFC 7617, compared in constant time), answers 401 without them,
serves the plain ETSI model with the unqualified top member TeraFlowSDN reads, and lets a
valid user write. It is off unless configured, listens where it is told (loopback by
default), and speaks HTTPS with the node's certificate unless ``danger_plain_http`` is set
(TeraFlowSDN talks ``http://`` to every node; a WARNING is logged). The mTLS listener and
its controller-certificate rule do not change.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from keyplane.api.etsi015.agent import SdnAgent
from keyplane.api.etsi015.restconf import RestconfOptions, create_agent_app
from keyplane.api.etsi015.server import RestconfServer
from keyplane.api.httpserver import RequestObserver
from keyplane.certs import CertPaths, server_ssl_context
from keyplane.config import TeraflowSdnListener
from keyplane.errors import ConfigError

__all__ = ["TERAFLOW_REALM", "read_credentials", "serve_teraflowsdn"]

logger = logging.getLogger(__name__)

TERAFLOW_REALM = "keyplane ETSI GS QKD 015 (TeraFlowSDN)"


def read_credentials(path: Path) -> dict[str, str]:
    """Users and passwords from ``path``: one ``user:password`` per line, ``#`` comments.

    Raises:
        ConfigError: the file cannot be read, a line has no ``:`` or an empty part, a user
            appears twice, or there is no user at all.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"etsi015.teraflowsdn.credentials_file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s holds passwords and is readable by others (chmod 600 it)", path)
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{path}:{number}: expected user:password")
        if user in users:
            raise ConfigError(f"{path}:{number}: user {user!r} appears twice")
        users[user] = password
    if not users:
        raise ConfigError(f"{path}: no user:password line")
    return users


async def serve_teraflowsdn(agent: SdnAgent, listener: TeraflowSdnListener, *,
                            server_cert: CertPaths, ca_file: Path,
                            observer: RequestObserver | None = None,
                            startup_timeout_s: float = 30.0) -> RestconfServer | None:
    """Start ``agent``'s TeraFlowSDN-facing listener, if ``listener`` gives its node a port.

    Args:
        agent: the node's SDN agent.
        listener: the topology's ``etsi015.teraflowsdn``.
        server_cert: the node's certificate (for HTTPS; no client certificate is asked).
        ca_file: the network's CA (accepted, never required, from clients).
        observer: told about every request (metrics label ``etsi015_teraflowsdn``).
        startup_timeout_s: how long to wait for the socket.

    Returns:
        The running server (its URL in :attr:`RestconfServer.url`), or None when the node has
        no port in ``listener.ports``.

    Raises:
        ConfigError: the credentials file is unusable (see :func:`read_credentials`).
        OSError, RuntimeError: the server did not start (e.g. the port is taken).
    """
    port = listener.ports.get(agent.node_id)
    if port is None:
        return None
    options = RestconfOptions(unqualified_top_member=True, keyplane_augment=False,
                              basic_users=read_credentials(listener.credentials_file),
                              realm=TERAFLOW_REALM)
    context = None
    if listener.danger_plain_http:
        logger.warning("SDN agent %s serves TeraFlowSDN over plain HTTP on %s:%s "
                       "(danger_plain_http): its credentials cross the network in clear",
                       agent.node_id, listener.host, port)
    else:
        context = server_ssl_context(server_cert, ca_file, require_client_cert=False)
    server = RestconfServer(create_agent_app(agent, options), listener.host, port,
                            ssl_context=context, observer=observer,
                            interface="etsi015_teraflowsdn",
                            startup_timeout_s=startup_timeout_s)
    return await server.start()
