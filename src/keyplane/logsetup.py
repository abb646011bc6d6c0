"""Logging of keyplane processes: quiet by default, JSON for machines, debug on request.

Three modes, one call (:func:`setup_logging`) at the start of every command:

* **quiet** (default): warnings and errors, plus one line per *notable event* of the
  process's event stream (:class:`NotableEvents`: a session becomes operative, is rerouted
  or closes, a link changes state, an alarm is raised or cleared, a request is refused).
  Routine start-up lines (servers listening, Alembic's migration context, link
  synchronisation), per-request HTTP lines (uvicorn, httpx) and protocol chatter stay out.
* **verbose** (``--verbose``): keyplane at DEBUG, libraries at INFO (never a request URL:
  ETSI 014 URLs carry key_IDs).
* **json** (``--log-format json``, either mode): one JSON object per line
  (``ts``, ``level``, ``logger``, ``message``, and for notable events ``event`` with the
  event's type, element, node, session and data), for log shippers.

Why notable events rather than INFO lines: the event stream already says what happened in
the paper's vocabulary, once, with ids; elements log for their developers. Events never
carry key material (:mod:`keyplane.events` refuses such fields), so neither do these lines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from keyplane.events import Event, EventType

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "NotableEvents", "setup_logging"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

EVENTS_LOGGER = "keyplane.events"

_LIBRARIES_QUIET = ("alembic", "uvicorn", "uvicorn.error", "nats", "asyncio", "aiosqlite",
                    "sqlalchemy", "matplotlib", "PIL", "selenium", "urllib3")
"""Loggers held at WARNING in quiet mode and at INFO (never DEBUG) in verbose mode."""

_ALWAYS_QUIET = ("httpx", "httpcore", "uvicorn.access")
"""Loggers held at WARNING even in verbose mode: their lines are request URLs, and ETSI 014
URLs carry key_IDs (docs/security.md, "Operators")."""

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "keyplane"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``exc`` (the formatted traceback, if any) and the record's ``event``
    (set by :class:`NotableEvents`)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event is not None:
            doc["event"] = event
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def setup_logging(*, verbose: bool = False, fmt: LogFormat = "text",
                  stream: IO[str] | None = None) -> None:
    """Configure the root logger for a keyplane command (replaces an earlier call's set-up).

    Args:
        verbose: keyplane at DEBUG and libraries at INFO, instead of the quiet default.
        fmt: ``text`` (human lines) or ``json`` (one object per line).
        stream: where to write (default: stderr; stdout carries the commands' own output).

    Raises:
        ValueError: an unknown ``fmt``.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("keyplane").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger(EVENTS_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _LIBRARIES_QUIET:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _ALWAYS_QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)


def _short(session: str | None) -> str:
    return (session or "-")[:8]


def _path(data: dict[str, Any], key: str = "path") -> str:
    path = data.get(key)
    return " -> ".join(str(n) for n in path) if isinstance(path, list) and path else "-"


class NotableEvents:
    """An event sink that logs the notable events of a process, one line each.

    Which events, and at which level (everything else only at DEBUG):

    ============================ ================ =======================================
    event                        from element     level
    ============================ ================ =======================================
    ``alarm``                    any              WARNING (``cleared``: INFO)
    ``link_state``               ``qkd``          INFO (a link's modules changed state)
    ``session_operative``        ``admission``    INFO (path, rate, priority)
    ``session_rerouted``         ``admission``    INFO (``ok=False``: WARNING)
    ``session_restored``         any              INFO
    ``session_closed``           ``admission``    INFO (with the reason)
    ``admission_refused``,       any              INFO (a QoS or route refusal)
    ``config_refused``
    ``auth_refused``             any              WARNING (an identity was refused)
    ============================ ================ =======================================

    Session and link events also come from the KMs and agents of a session's path; only
    the element that decides (Admission Control, the link's modules) is logged, so a
    session is one line, not one per KM. Failures an element logs itself (an SDN agent it
    cannot reach) are not repeated here.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(EVENTS_LOGGER)

    def write(self, event: Event) -> None:
        """Log ``event`` if notable (DEBUG otherwise, which quiet mode drops)."""
        found = self._describe(event)
        level, text = found if found is not None else (logging.DEBUG, self._plain(event))
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(level, text, extra={"event": {
            "type": event.type.value, "element": event.element, "node": event.node,
            "session": event.session, "t": event.t, "data": event.data}})

    def close(self) -> None:
        """Nothing to release."""

    @staticmethod
    def _plain(e: Event) -> str:
        where = f" at {e.node}" if e.node else ""
        return f"{e.type.value} from {e.element}{where}" + (
            f" session {_short(e.session)}" if e.session else "")

    @staticmethod
    def _describe(e: Event) -> tuple[int, str] | None:
        d = e.data
        t = e.type
        if t is EventType.alarm:
            link = d.get("link") or d.get("link_id") or "-"
            kind = d.get("kind", "?")
            msg = f": {d['message']}" if d.get("message") else ""
            level = logging.INFO if kind == "cleared" else logging.WARNING
            return level, f"alarm {kind} on link {link}{msg}"
        if t is EventType.link_state and e.element == "qkd":
            change = f" ({d['change']})" if d.get("change") else ""
            return logging.INFO, f"link {d.get('link', '-')}: {d.get('state', '?')}{change}"
        if t is EventType.session_operative and e.element == "admission":
            rate = d.get("rate_bps")
            rate_text = f", {float(rate) / 1000:g} kbit/s" if rate else ""
            return logging.INFO, (f"session {_short(e.session)} operative over {_path(d)}"
                                  f"{rate_text}, priority {d.get('priority', '-')}")
        if t is EventType.session_rerouted and e.element == "admission":
            if d.get("ok") is False:
                return logging.WARNING, (f"session {_short(e.session)} could not be rerouted:"
                                         f" {d.get('reason', '')}")
            return logging.INFO, (f"session {_short(e.session)} rerouted from "
                                  f"{_path(d, 'old_path')} to {_path(d)}")
        if t is EventType.session_restored:
            return logging.INFO, f"session {_short(e.session)} restored over {_path(d)}"
        if t is EventType.session_closed and e.element == "admission":
            return logging.INFO, (f"session {_short(e.session)} closed ({d.get('reason', '-')})"
                                  f" over {_path(d)}")
        if t in (EventType.admission_refused, EventType.config_refused):
            at = f" at {e.node}" if e.node else ""
            return logging.INFO, (f"session {_short(e.session)} refused{at}: "
                                  f"{d.get('reason', '-')}")
        if t is EventType.auth_refused:
            who = d.get("sae") or "-"
            return logging.WARNING, (f"request of {who} refused by {e.element}: "
                                     f"{d.get('reason', '-')}")
        return None
