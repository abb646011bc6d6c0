"""The client SDK's public surface is exactly its curated ``__all__`` (as httpx does)."""

from __future__ import annotations

import keyplane.api.client as client


def test_client_all_lists_every_public_name_and_only_those() -> None:
    public = {name for name, value in vars(client).items()
              if not name.startswith("_") and not isinstance(value, type(client))}
    assert set(client.__all__) == public
    assert client.__all__ == sorted(client.__all__)


def test_client_errors_form_one_hierarchy() -> None:
    for name in ("ApiError", "TransportError", "Etsi004StatusError"):
        assert issubclass(getattr(client, name), client.ClientError)
    for name in ("BadRequestError", "UnauthorizedError", "ServiceUnavailableError"):
        assert issubclass(getattr(client, name), client.ApiError)
    err = client.ApiError.from_response(401, {"message": "no", "details": [{"a": 1}]})
    assert isinstance(err, client.UnauthorizedError) and err.details == [{"a": 1}]


def test_key_repr_hides_key_bytes() -> None:
    k = client.Key("00000000-0000-4000-8000-000000000000", b"\x01secret-bytes")
    c = client.KeyChunk("ks", 0, b"\x01secret-bytes")
    assert "secret" not in repr(k) and "secret" not in repr(c)


def test_endpoints_file_resolves_sae_and_etsi004_base(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    doc = {"kms": {"km0": {"etsi014": "https://127.0.0.1:9000"},
                   "km1": {"etsi014": "https://127.0.0.1:9001",
                           "etsi004": "https://127.0.0.1:9001/etsi004"}},
           "ca": "certs/ca.pem",
           "saes": {"s0": {"node": "km0", "cert": "certs/sae/s0.pem", "key": "certs/sae/s0.key"},
                    "s1": {"node": "km1", "cert": "c1.pem", "key": "c1.key"}}}
    (tmp_path / "endpoints.json").write_text(json.dumps(doc))
    s0 = client.load_sae_endpoint(tmp_path, "s0")
    assert s0.etsi004_url == "https://127.0.0.1:9000/etsi004"
    assert s0.cert == tmp_path / "certs/sae/s0.pem" and s0.ca == tmp_path / "certs/ca.pem"
    assert client.load_sae_endpoint(tmp_path, "s1").etsi004_url == "https://127.0.0.1:9001/etsi004"
    import pytest

    with pytest.raises(client.ClientError):
        client.load_sae_endpoint(tmp_path, "nobody")
