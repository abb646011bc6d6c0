"""ETSI GS QKD 014 server: :func:`create_etsi014_app` and the wire models (``models``)."""

__all__ = ["API_PREFIX", "check_key_request", "create_etsi014_app"]


def __getattr__(name: str) -> object:
    # The app pulls in FastAPI; the client SDK imports only the models.
    if name in __all__:
        from keyplane.api.etsi014 import app

        return getattr(app, name)
    raise AttributeError(name)
