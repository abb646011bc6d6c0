"""The cyclic garbage collector in keyplane's processes: paused while they import, then
told that what they built at start-up lives as long as they do.

A keyplane process imports some 2,000 modules and builds its elements before it serves
anything; those objects are never garbage. CPython's collector nevertheless runs every 700
allocations or so and, in a full (generation 2) collection, walks all of them. Imports make
next to no cyclic garbage (a few thousand objects), so the entry points here import with the
collector paused, then :func:`settle`: ``gc.freeze()`` moves every object alive into the
permanent generation, which collections no longer walk, and the collector runs again for
what the process makes from then on. A process calls :func:`settle` again once it has
started (``keyplane.runtime.Embedded``). Only processes started here freeze: in any other
(a test session importing keyplane) the collector is only paused while importing.

Measured (docs/benchmarks.md, the demo target, round 5): importing ``keyplane demo``'s stack
took 1.45 s of CPU, 1.17 s so; a link worker's 0.59 s, 0.52 s; the collector's own time up
to the demo's first relayed key went from 0.38 s to 0.20 s.

Settled, a keyplane process also collects its youngest generation every
:data:`YOUNG_THRESHOLD` net allocations instead of CPython's 700: a key manager in bulk
makes and drops thousands of short-lived containers per request (key objects, batch rows,
frames), and at 700 the collector ran several times per 100-key ETSI 014 pair, its
objects promoted and then walked again by full collections: 130-350 us of CPU per pair
(6-8 % of the server's CPU), 30-60 us at 10,000 (``bench/api.py``, issue #15). At 1,000 keys
per request (about three net allocations of tracked objects per key across the KMs of a
2-hop relay) 10,000 still ran the young collection every three pairs or so and the middle
one every ten young ones: 7-8 % of the server's CPU in 12 s windows; at 50,000, 4 %
(docs/benchmarks.md, wave 13). At most that many more young objects wait for a collection:
a few megabytes.

``python -m keyplane.heap MODULE:FUNCTION`` imports ``MODULE`` so and calls ``FUNCTION``
(the link workers are started that way); the ``keyplane`` console script and
``python -m keyplane`` do the same for the CLI.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import cast

__all__ = ["YOUNG_THRESHOLD", "cli_main", "importing", "run_entry", "settle"]

YOUNG_THRESHOLD = 50_000
"""Net allocations of tracked objects between two collections of the youngest generation
in a settled keyplane process (CPython's default: 700)."""

_own_process = False
"""Whether this process was started through :func:`run_entry` (a keyplane command or link
worker). Only then does :func:`settle` freeze: frozen objects are never collected, and a
process that merely uses keyplane (a test session) may build and drop many networks."""


def settle() -> None:
    """In a keyplane process, freeze every object alive now (collections no longer walk
    them; the collector keeps running for what is made from now on, its youngest
    generation every :data:`YOUNG_THRESHOLD` allocations); elsewhere nothing."""
    if _own_process:
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """Pause the collector for the block (imports: nothing to collect), then settle.

    The collector is enabled again only if it was on before (a caller that switched it off
    keeps it off).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        settle()
        if was_enabled:
            gc.enable()


def run_entry(target: str) -> None:
    """Import ``module:function`` with the collector paused, settle, call the function.

    Raises:
        ValueError: ``target`` is not ``module:function``.
    """
    global _own_process
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected MODULE:FUNCTION, got {target!r}")
    _own_process = True
    with importing():
        entry = cast(Callable[[], object], getattr(importlib.import_module(module), name))
    entry()


def cli_main() -> None:
    """The ``keyplane`` console script: the CLI, imported with the collector paused."""
    run_entry("keyplane.cli:main")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m keyplane.heap MODULE:FUNCTION")
    target = sys.argv.pop(1)
    run_entry(target)
