"""ETSI GS QKD 014 server: :func:`create_etsi014_app` and the wire models (``models``)."""

from keyplane.lazy import lazy_exports

__all__ = ["API_PREFIX", "check_key_request", "create_etsi014_app"]

# The app pulls in FastAPI; the client SDK imports only the models.
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "keyplane.api.etsi014.app"))
