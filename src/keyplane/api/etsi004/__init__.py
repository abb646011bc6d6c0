"""ETSI GS QKD 004 server: :func:`create_etsi004_app`, models and :class:`Etsi004Status`."""

from keyplane.api.etsi004.status import Etsi004Status
from keyplane.lazy import lazy_exports

__all__ = ["ETSI004_PREFIX", "Etsi004Status", "create_etsi004_app"]

# The app pulls in FastAPI; the client SDK imports only the status and the models.
__getattr__, __dir__ = lazy_exports(
    __name__, dict.fromkeys(["ETSI004_PREFIX", "create_etsi004_app"], "keyplane.api.etsi004.app"))
