"""The one exception table: every domain failure has an ETSI 014 code and a 004 reading."""

from __future__ import annotations

import pytest

from keyplane import errors as e
from keyplane.api.errors import ApiRequestError, error_details, etsi004_status, map_exception
from keyplane.api.etsi004.status import Etsi004Status as S


@pytest.mark.parametrize(("exc", "http", "open_status", "get_key_status"), [
    (e.AuthenticationFailed("x"), 401, None, None),
    (e.KeyNotFound("x"), 400, S.KSID_NOT_FOUND, S.KSID_NOT_FOUND),
    (e.SessionNotFound("x"), 400, S.KSID_NOT_FOUND, S.KSID_NOT_FOUND),
    (e.SessionIdInUse("x"), 400, S.OC_KSID_ALREADY_IN_USE, S.OC_KSID_ALREADY_IN_USE),
    (e.QosNotMet("x"), 503, S.OC_QOS_NOT_SATISFIABLE, S.OC_QOS_NOT_SATISFIABLE),
    (e.PeerNotConnected("x"), 503, S.PEER_NOT_CONNECTED, S.GK_PEER_NOT_CONNECTED),
    (e.InsufficientKeyMaterial("x"), 503, S.GK_INSUFFICIENT_KEY_AVAILABLE,
     S.GK_INSUFFICIENT_KEY_AVAILABLE),
    (e.KmBusy("km0", 10, 10), 503, S.GK_INSUFFICIENT_KEY_AVAILABLE,
     S.GK_INSUFFICIENT_KEY_AVAILABLE),
    (e.PeerUnreachable("x"), 503, S.NO_QKD_CONNECTION_AVAILABLE, S.NO_QKD_CONNECTION_AVAILABLE),
    (e.ControlPlaneUnreachable("x"), 503, S.TIMEOUT_ERROR, S.TIMEOUT_ERROR),
    (e.RelayTimeout("x"), 503, S.TIMEOUT_ERROR, S.TIMEOUT_ERROR),
    (e.RateLimited("s", 8, 2.0, 1.0), 503, S.TIMEOUT_ERROR, S.TIMEOUT_ERROR),
    (e.ExceedsTokenBucket("s", 2048, 1024), 400, S.TIMEOUT_ERROR, S.TIMEOUT_ERROR),
    (e.BusTimeout("t", 1.0), 503, S.TIMEOUT_ERROR, S.TIMEOUT_ERROR),
    (TimeoutError(), 503, S.TIMEOUT_ERROR, S.TIMEOUT_ERROR),
    (e.IllegalTransition("m", "s", "ev"), 503, None, None),
    (e.StoreError("db down"), 503, None, None),
])
def test_exception_maps_to_its_row(exc: BaseException, http: int, open_status: S | None,
                                   get_key_status: S | None) -> None:
    row = map_exception(exc)
    assert row is not None and row.http_status == http
    assert etsi004_status(row, "open_connect") == open_status
    assert etsi004_status(row, "get_key") == get_key_status


def test_non_domain_exception_is_not_mapped() -> None:
    assert map_exception(ValueError("bug")) is None
    assert map_exception(KeyError("bug")) is None


def test_error_details_carry_reason_or_request_details() -> None:
    assert error_details(e.KeyNotFound("gone")) == [{"reason": "gone"}]
    assert error_details(e.KeyNotFound()) is None
    assert error_details(ApiRequestError("m", [{"size": 7}])) == [{"size": 7}]


def test_limits_from_km_settings_and_validation() -> None:
    from types import SimpleNamespace

    from keyplane.api.settings import Etsi014Limits

    km = SimpleNamespace(default_key_size_bits=128, min_key_size_bits=64,
                         max_key_size_bits=1024, max_keys_per_request=10)
    lim = Etsi014Limits.from_km_settings(km)
    assert (lim.key_size_bits, lim.max_key_per_request, lim.max_sae_id_count) == (128, 10, 0)
    with pytest.raises(ValueError):
        Etsi014Limits(key_size_bits=100)
    with pytest.raises(ValueError):
        Etsi014Limits(min_key_size_bits=512, key_size_bits=256)
