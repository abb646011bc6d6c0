"""Bus settings: backoff with jitter, environment overrides."""

from __future__ import annotations

import pytest

from keyplane.bus.settings import BusSettings, bus_settings_from_env
from keyplane.errors import ConfigError


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    st = BusSettings(reconnect_backoff_base_s=0.1, reconnect_backoff_cap_s=1.0)
    assert st.backoff_s(0, 0.0) == pytest.approx(0.05)
    assert st.backoff_s(0, 0.999) == pytest.approx(0.1, rel=0.01)
    assert st.backoff_s(3, 0.999) == pytest.approx(0.8, rel=0.01)
    assert st.backoff_s(1000, 0.999) == pytest.approx(1.0, rel=0.01)
    assert st.backoff_s(1000, 0.0) == pytest.approx(0.5)


def test_environment_overrides_the_defaults_and_explicit_values_win() -> None:
    env = {"KEYPLANE_BUS_MAX_OUTAGE_S": "30", "KEYPLANE_BUS_CONNECT_TIMEOUT_S": "2.5",
           "OTHER": "x"}
    st = bus_settings_from_env(env, connect_timeout_s=7.0)
    assert st.max_outage_s == 30.0 and st.connect_timeout_s == 7.0
    assert st.startup_timeout_s == BusSettings().startup_timeout_s


@pytest.mark.parametrize(("env", "match"), [
    ({"KEYPLANE_BUS_MAX_OUTAGE_S": "soon"}, "KEYPLANE_BUS_MAX_OUTAGE_S"),
    ({"KEYPLANE_BUS_MAX_OUTAGE_S": "0"}, "KEYPLANE_BUS_MAX_OUTAGE_S"),
    ({"KEYPLANE_BUS_RECONECT_BACKOFF_CAP_S": "1"}, "no such setting"),
])
def test_a_bad_variable_is_named_in_the_error(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        bus_settings_from_env(env)


def test_attempt_bounds_double_after_timeouts_up_to_the_cap() -> None:
    st = BusSettings(connect_timeout_s=10.0, connect_timeout_cap_s=80.0)
    assert [st.attempt_timeout_s(n) for n in range(5)] == [10.0, 20.0, 40.0, 80.0, 80.0]
