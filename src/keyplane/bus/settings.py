"""Tunables of a bus connection: how long to wait for the server, how to come back, when to
give up. Every wait on the bus is one of these (STYLE.md §3), with defaults that hold on a
busy 2-core machine.

A process reads them once at start-up with :func:`bus_settings_from_env` (environment
variables ``KEYPLANE_BUS_<FIELD>``, e.g. ``KEYPLANE_BUS_MAX_OUTAGE_S=60``), so an operator
or a test can shorten or lengthen them without code changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keyplane.errors import ConfigError

__all__ = ["ENV_PREFIX", "BusSettings", "bus_settings_from_env", "settings_from_env"]

ENV_PREFIX = "KEYPLANE_BUS_"

PositiveS = Annotated[float, Field(gt=0.0)]


class BusSettings(BaseModel):
    """Settings of a :class:`~keyplane.bus.nats.NatsBus` connection (real seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout_s: PositiveS = 10.0
    """One connection attempt (TCP + TLS handshake + CONNECT); a loaded server can be slow."""
    connect_timeout_cap_s: PositiveS = 80.0
    """While reconnecting, each attempt that *timed out* doubles the next one's bound, up to
    this cap. A process starved of CPU (a niced link worker on an overloaded machine) may
    need longer than ``connect_timeout_s`` for its TLS handshake; with a fixed bound every
    attempt would time out until ``max_outage_s`` ended the process. Refused connections (the
    server still down) do not grow it."""
    startup_timeout_s: PositiveS = 120.0
    """How long a process waits, at start, for the bus to accept it (attempts back off)."""
    reconnect_backoff_base_s: PositiveS = 0.1
    """First pause between reconnection attempts; it doubles per failed attempt ..."""
    reconnect_backoff_cap_s: PositiveS = 2.0
    """... up to this cap (with the handshake, what a process adds to a server's outage once
    it is back: issue #14 wants delivery again within 10 s). Each pause is drawn uniformly
    from [pause/2, pause] (jitter), so a fleet of processes does not reconnect in lockstep
    after a server restart."""
    max_outage_s: PositiveS = 120.0
    """A process whose bus stays unreachable this long gives up: the bus is marked failed and
    the process exits non-zero so its supervisor (systemd, Kubernetes) restarts it. Until
    then it reconnects forever and requests wait up to their own deadline."""
    reconnect_settle_s: PositiveS = 30.0
    """For this long after a reconnection, a request that meets "no responders" is retried
    within its own deadline: its responder may not have reconnected yet."""
    pending_bytes: Annotated[int, Field(ge=1 << 16)] = 8 << 20
    """Bytes of publishes buffered while the server is unreachable; beyond it a publish fails
    with :class:`~keyplane.errors.BusUnavailable`."""
    drain_timeout_s: PositiveS = 10.0
    """On close, how long in-flight deliveries and replies may take to finish."""
    ping_interval_s: PositiveS = 10.0
    """Keep-alive PING period: a dead server (no TCP reset) is noticed after about
    ``ping_interval_s * max_outstanding_pings``."""
    max_outstanding_pings: Annotated[int, Field(ge=1)] = 3

    def backoff_s(self, failed_attempts: int, u: float) -> float:
        """Pause before the next attempt after ``failed_attempts`` failures (jitter ``u`` in
        [0, 1): the pause is in [d/2, d) with d = min(cap, base * 2**n))."""
        d = min(self.reconnect_backoff_cap_s,
                self.reconnect_backoff_base_s * 2.0 ** min(max(failed_attempts, 0), 30))
        return d * (0.5 + 0.5 * u)

    def attempt_timeout_s(self, timed_out: int) -> float:
        """Bound of the next connection attempt after ``timed_out`` consecutive attempts
        that timed out: ``connect_timeout_s`` doubled per such attempt, at most
        ``connect_timeout_cap_s``."""
        return min(self.connect_timeout_cap_s,
                   self.connect_timeout_s * 2.0 ** min(max(timed_out, 0), 30))


def settings_from_env(model: type[BaseModel], prefix: str,
                      environ: Mapping[str, str] | None = None, **explicit: Any) -> Any:
    """``model`` with fields read from ``<prefix><FIELD>`` environment variables.

    One function against the model's own defaults (STYLE.md §4): explicit keyword arguments
    win over the environment, which wins over the defaults.

    Raises:
        ConfigError: a variable names no field, or its value does not validate (the
            variable is named in the message).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(prefix):
            continue
        field = name[len(prefix):].lower()
        if field not in model.model_fields:
            raise ConfigError(f"{name}: no such setting (known: "
                              f"{', '.join(sorted(model.model_fields))})")
        values[field] = value
    values.update(explicit)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"{prefix}{loc.upper()}: {first['msg']}") from exc


def bus_settings_from_env(environ: Mapping[str, str] | None = None, **explicit: Any
                          ) -> BusSettings:
    """:class:`BusSettings` from ``KEYPLANE_BUS_*`` variables (see :func:`settings_from_env`)."""
    result: BusSettings = settings_from_env(BusSettings, ENV_PREFIX, environ, **explicit)
    return result
