"""ETSI GS QKD 004 server: :func:`create_etsi004_app`, models and :class:`Etsi004Status`."""

from keyplane.api.etsi004.status import Etsi004Status

__all__ = ["ETSI004_PREFIX", "Etsi004Status", "create_etsi004_app"]


def __getattr__(name: str) -> object:
    # The app pulls in FastAPI; the client SDK imports only the status and the models.
    if name in ("ETSI004_PREFIX", "create_etsi004_app"):
        from keyplane.api.etsi004 import app

        return getattr(app, name)
    raise AttributeError(name)
