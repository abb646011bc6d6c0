"""``keyplane.client``: the SAE client SDK (ETSI 014 and 004), the short import path.

The SDK lives in :mod:`keyplane.api.client` next to the servers it talks to; this module
re-exports its public surface unchanged, so ``from keyplane.client import Etsi014Client``
and ``from keyplane.api.client import Etsi014Client`` are the same class.
"""

from keyplane.api.client import *  # noqa: F403
from keyplane.api.client import __all__ as _sdk_all

__all__ = list(_sdk_all)
