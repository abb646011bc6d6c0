"""Where an SAE's KM is and which certificate it uses: ``STATE_DIR/endpoints.json``.

``keyplane run`` writes (paths relative to STATE_DIR)::

    {"kms": {"<node>": {"etsi014": "https://127.0.0.1:PORT",
                        "etsi004": "https://127.0.0.1:PORT/etsi004", "etsi015": "..."}},

(``etsi004`` may be omitted or given as the bare origin: the 004 service is then taken to
be ``/etsi004`` on the same server, where :func:`keyplane.api.server.create_km_app` mounts
it.)
     "ca": "certs/ca.pem",
     "saes": {"<sae>": {"node": "<node>", "cert": "certs/sae/<sae>.pem",
                        "key": "certs/sae/<sae>.key"}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keyplane.api.client._errors import ClientError

__all__ = ["SaeEndpoint", "load_sae_endpoint"]


@dataclass(frozen=True)
class SaeEndpoint:
    """Everything an SAE needs to call its KM."""

    sae_id: str
    node: str
    etsi014_url: str
    etsi004_url: str
    cert: Path
    key: Path
    ca: Path


def load_sae_endpoint(state_dir: str | Path, sae_id: str) -> SaeEndpoint:
    """Read ``endpoints.json`` under ``state_dir`` and resolve ``sae_id``'s KM and certs.

    Raises:
        ClientError: the file is missing or malformed, or does not list ``sae_id``.
    """
    base = Path(state_dir)
    path = base / "endpoints.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        sae = doc["saes"][sae_id]
        node = sae["node"]
        km = doc["kms"][node]
        etsi014 = km["etsi014"]
        etsi004 = km.get("etsi004") or etsi014
        if urlsplit(etsi004).path in ("", "/"):
            # A bare origin names the KM's HTTPS server; 004 is mounted under /etsi004.
            etsi004 = etsi004.rstrip("/") + "/etsi004"
        return SaeEndpoint(sae_id=sae_id, node=node, etsi014_url=etsi014, etsi004_url=etsi004,
                           cert=base / sae["cert"], key=base / sae["key"], ca=base / doc["ca"])
    except FileNotFoundError as exc:
        raise ClientError(f"{path} not found: is `keyplane run` running?") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(f"{path} does not describe SAE {sae_id!r} ({exc!r})") from exc
