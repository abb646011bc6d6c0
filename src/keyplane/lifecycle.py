"""The lifecycle every long-lived keyplane element shares, and that of a keyplane process.

An element is started once and closed once (``close()`` is idempotent); ``async with``
does both, and closes what a failed ``start()`` left half-started.

A process (``keyplane controller``, ``keyplane node``) runs under :func:`run_process`:
SIGTERM/SIGINT ask it to stop; a process still starting is cancelled at once (there is
nothing to drain); and whatever happens, a watchdog ends the process after
``shutdown_timeout_s`` even if asyncio's teardown hangs (a blocked executor thread, a child
that does not exit). A bus that gives up (:meth:`keyplane.bus.Bus.wait_failure`) ends the
process with a non-zero status, so systemd or Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field

from keyplane.errors import BusError

__all__ = [
    "EXIT_FORCED",
    "ProcessControl",
    "ProcessSettings",
    "Service",
    "process_settings_from_env",
    "run_process",
    "stop_subprocess",
]

logger = logging.getLogger(__name__)

EXIT_FORCED = 70
"""Exit status when the shutdown bound ran out and the watchdog ended the process."""

_REPORT_BOUND_S = 5.0
"""How long a forced exit waits for its report of what was pending to be written (a stderr
that nobody reads must not keep the process alive)."""


class Service:
    """Base of elements with an async ``start()``/``close()`` lifecycle."""

    async def start(self) -> None:
        """Start the element's tasks and subscriptions."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop everything the element started (idempotent)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            # a start that failed half-way must not leave tasks, servers or workers behind:
            # they would keep the process alive after its failure
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class ProcessSettings(BaseModel):
    """How a keyplane process starts and stops (real seconds).

    Environment: ``KEYPLANE_PROCESS_<FIELD>`` (:func:`process_settings_from_env`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    shutdown_timeout_s: Annotated[float, Field(gt=0.0)] = 25.0
    """From SIGTERM (or the end of the main coroutine) to exit, whatever hangs; under
    Kubernetes' default 30 s grace period."""
    announce_timeout_s: Annotated[float, Field(gt=0.0)] = 300.0
    """How long a node process keeps announcing itself until the control plane answers (it
    may start later, or be restarting)."""
    announce_request_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0
    """One announcement's wait for the control plane's answer (a loaded controller)."""
    startup_backoff_base_s: Annotated[float, Field(gt=0.0)] = 0.1
    """First pause between attempts to reach a dependency at start; doubles per attempt ..."""
    startup_backoff_cap_s: Annotated[float, Field(gt=0.0)] = 5.0
    """... up to this cap, each drawn from [pause/2, pause] (jitter)."""

    def backoff_s(self, failed_attempts: int, u: float) -> float:
        """Pause after ``failed_attempts`` failures, jitter ``u`` in [0, 1)."""
        d = min(self.startup_backoff_cap_s,
                self.startup_backoff_base_s * 2.0 ** min(max(failed_attempts, 0), 30))
        return d * (0.5 + 0.5 * u)


def process_settings_from_env(environ: Mapping[str, str] | None = None, **explicit: Any
                              ) -> ProcessSettings:
    """:class:`ProcessSettings` from ``KEYPLANE_PROCESS_*`` environment variables.

    Raises:
        ConfigError: an unknown variable or a bad value (named in the message).
    """
    from keyplane.bus.settings import settings_from_env

    result: ProcessSettings = settings_from_env(ProcessSettings, "KEYPLANE_PROCESS_", environ,
                                                **explicit)
    return result


class ProcessControl:
    """What a process's main coroutine gets from :func:`run_process`."""

    def __init__(self, settings: ProcessSettings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        """Set on SIGTERM/SIGINT once the process is ready: stop serving and close."""
        self._ready = False

    def ready(self, line: str) -> None:
        """Print the readiness line (launchers wait for it) and leave the starting phase:
        from now on a signal lets the process close in order instead of cancelling it."""
        self._ready = True
        print(line, flush=True)

    async def serve_until_stopped(self, *buses: Any) -> None:
        """Wait for a stop signal, or raise the failure of any of ``buses``.

        Raises:
            BusError: a bus gave up (its server unreachable for too long).
        """
        waits: list[asyncio.Task[Any]] = [asyncio.ensure_future(self.stop.wait())]
        waits += [asyncio.ensure_future(b.wait_failure()) for b in buses]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        for task in done:
            result = task.result()
            if isinstance(result, BusError):
                raise result


def _await_chain(coro: object, limit: int = 40) -> list[str]:
    """Where a suspended coroutine waits, outermost first, down the ``await`` chain
    (every frame of it: ``file:line in function``).

    ``Task.print_stack`` shows only a suspended task's own frame (``await main(control)``),
    not the coroutine it awaits inside it, and so on down: the frame that actually waits
    (a future of a thread, a lock) was missing from the report."""
    out: list[str] = []
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) \
            or getattr(coro, "gi_frame", None)
        if frame is None:
            break  # a future's iterator: the task's future is written beside the chain
        code = frame.f_code
        out.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) \
            or getattr(coro, "gi_yieldfrom", None)
    return out


def _dump_pending(loop: asyncio.AbstractEventLoop | None) -> None:
    """Write what a shutdown that ran out of time still waits for: the loop's unfinished
    tasks (where each is suspended) and every thread's stack (an executor call, a child's
    wait). Best effort: the loop's thread is still running and may change them meanwhile."""
    try:
        tasks = list(asyncio.all_tasks(loop)) if loop is not None else []
        for task in tasks[:40]:
            sys.stderr.write(f"keyplane: unfinished task {task.get_name()}, awaiting:\n")
            for where in _await_chain(task.get_coro()):
                sys.stderr.write(f"  {where}\n")
            # the future it waits on (a thread's result, a lock, a sleep), with its callbacks
            sys.stderr.write(f"  -> {getattr(task, '_fut_waiter', None)!r:.300}\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except Exception as exc:  # never keep the process from exiting
        with contextlib.suppress(Exception):
            sys.stderr.write(f"keyplane: could not list what was pending ({exc!r})\n")


def _arm_watchdog(timeout_s: float, why: str,
                  loop: asyncio.AbstractEventLoop | None = None) -> threading.Timer:
    def report() -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"keyplane: {why} did not finish within {timeout_s:g} s; "
                             "exiting\n")
            _dump_pending(loop)
            sys.stderr.flush()

    def expire() -> None:
        # the report in a thread of its own: a stderr nobody reads (a full pipe) would
        # block it, and the exit must happen anyway
        writer = threading.Thread(target=report, daemon=True)
        writer.start()
        writer.join(_REPORT_BOUND_S)
        os._exit(EXIT_FORCED)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    return timer


def run_process(main: Callable[[ProcessControl], Awaitable[None]],
                settings: ProcessSettings | None = None) -> None:
    """Run ``main(control)`` in a new event loop with bounded shutdown.

    * the first SIGTERM/SIGINT sets ``control.stop`` (or, before ``control.ready()``,
      cancels ``main``) and arms the watchdog; a second one cancels ``main``;
    * when ``main`` returns or raises, the watchdog is armed for asyncio's own teardown;
    * the watchdog ends the process with :data:`EXIT_FORCED` after ``shutdown_timeout_s``,
      first writing to stderr the tasks and threads the shutdown still waited for.

    Exceptions of ``main`` propagate (the CLI maps them to exit codes); a cancellation by
    a signal returns normally.
    """
    st = settings or ProcessSettings()
    watchdog: list[threading.Timer] = []

    def arm(why: str) -> None:
        if not watchdog:
            watchdog.append(_arm_watchdog(st.shutdown_timeout_s, why,
                                          asyncio.get_running_loop()))

    async def runner() -> None:
        control = ProcessControl(st)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signalled = [False]

        def on_signal(signame: str) -> None:
            logger.info("%s: stopping", signame)
            arm("shutdown")
            if signalled[0] or not control._ready:
                task.cancel()
            signalled[0] = True
            control.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            await main(control)
        except asyncio.CancelledError:
            if not signalled[0]:
                raise
        finally:
            arm("shutdown after the main task ended")

    try:
        asyncio.run(runner())
    finally:
        if watchdog:
            watchdog[0].cancel()


async def stop_subprocess(proc: asyncio.subprocess.Process, sig: int, timeout_s: float) -> int:
    """Send ``sig`` to a child process; SIGKILL if it has not exited after ``timeout_s``.

    Returns its exit code (-1 if none could be read). The supervisor's side of the bounded
    shutdown :func:`run_process` gives every keyplane process.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1
