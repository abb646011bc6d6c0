"""Readiness: named checks the elements of a process register, run together on demand.

A check is a callable returning ``bool`` or an awaitable of ``bool``; raising counts as
not ready (the exception's type is reported, never its text: it may carry a URL with
credentials). Checks run concurrently, each bounded by ``timeout_s`` (a setting), so one
hung dependency makes the process not ready instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Readiness", "ReadinessCheck", "ReadinessReport"]

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], "bool | Awaitable[bool]"]


@dataclass(frozen=True)
class ReadinessReport:
    """The outcome of one run: ready when every check passed (and there is at least one)."""

    checks: dict[str, str] = field(default_factory=dict)  # name -> "ok" or why not

    @property
    def ready(self) -> bool:
        """Whether every check passed."""
        return bool(self.checks) and all(v == "ok" for v in self.checks.values())


class Readiness:
    """The readiness checks of one process.

    Args:
        timeout_s: upper bound on each check per run.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        """Register ``check`` under ``name`` (one per name).

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} already registered")
        self._checks[name] = check

    def remove(self, name: str) -> None:
        """Forget the check ``name`` (an element that stopped); unknown names are ignored."""
        self._checks.pop(name, None)

    @property
    def names(self) -> list[str]:
        """The registered check names, sorted."""
        return sorted(self._checks)

    async def run(self) -> ReadinessReport:
        """Run every check concurrently, each within :attr:`timeout_s`."""
        names = self.names
        results = await asyncio.gather(*(self._one(n, self._checks[n]) for n in names))
        return ReadinessReport(dict(zip(names, results, strict=True)))

    async def _one(self, name: str, check: ReadinessCheck) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                result = check()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            return f"no answer within {self.timeout_s} s"
        except Exception as exc:
            logger.info("readiness check %s failed: %s", name, type(exc).__name__)
            return f"failed: {type(exc).__name__}"
        return "ok" if result else "not ready"
