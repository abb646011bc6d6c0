"""keyplane client SDK: ETSI GS QKD 014 and 004 clients for SAEs, sync and async.

```python
from keyplane.api.client import Etsi014Client

with Etsi014Client.from_state("state", "sae0") as master:      # reads endpoints.json
    keys = master.enc_keys("sae1", number=2, size=256)
with Etsi014Client.from_state("state", "sae1") as slave:
    same = slave.dec_keys("sae0", [k.key_id for k in keys])
```
Every call goes over HTTPS with mutual TLS (the SAE's certificate from ``keyplane run``).
Errors: see :mod:`keyplane.api.client._errors` (``ApiError`` with the HTTP code,
``Etsi004StatusError`` with the 004 status, ``TransportError``).
"""

from keyplane.api.client._config import SaeEndpoint, load_sae_endpoint
from keyplane.api.client._errors import (
    ApiError,
    BadRequestError,
    ClientError,
    Etsi004StatusError,
    ServiceUnavailableError,
    TransportError,
    UnauthorizedError,
)
from keyplane.api.client._etsi004 import (
    AsyncEtsi004Client,
    Etsi004Client,
    KeyChunk,
    StreamOpened,
)
from keyplane.api.client._etsi014 import AsyncEtsi014Client, Etsi014Client, Key, Status
from keyplane.api.etsi004.models import QosParameters
from keyplane.api.etsi004.status import Etsi004Status

__all__ = [
    "ApiError",
    "AsyncEtsi004Client",
    "AsyncEtsi014Client",
    "BadRequestError",
    "ClientError",
    "Etsi004Client",
    "Etsi004Status",
    "Etsi004StatusError",
    "Etsi014Client",
    "Key",
    "KeyChunk",
    "QosParameters",
    "SaeEndpoint",
    "ServiceUnavailableError",
    "Status",
    "StreamOpened",
    "TransportError",
    "UnauthorizedError",
    "load_sae_endpoint",
]
