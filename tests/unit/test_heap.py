"""keyplane.heap: the collector is paused while importing, then the heap is frozen."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyplane import heap
from keyplane.heap import importing, run_entry, settle


def test_importing_pauses_the_collector_and_restores_it() -> None:
    assert gc.isenabled()
    with importing():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_only_a_process_started_by_run_entry_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_freeze_count()
    thresholds = gc.get_threshold()
    settle()  # a test session: nothing frozen (it builds and drops many networks)
    assert gc.get_freeze_count() == before
    assert gc.get_threshold() == thresholds  # nor the collector's thresholds changed
    monkeypatch.setattr(heap, "_own_process", True)
    kept = [[object()] for _ in range(100)]  # tracked containers alive across the call
    try:
        with importing():
            pass
        assert gc.get_freeze_count() >= before + len(kept)
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()  # leave the test process's heap as it was
        gc.set_threshold(*thresholds)


def test_importing_keeps_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with importing():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_importing_restores_the_collector_when_the_block_raises() -> None:
    with pytest.raises(ImportError), importing():
        raise ImportError("no such module")
    gc.unfreeze()
    assert gc.isenabled()


@pytest.mark.parametrize("target", ["keyplane.cli", "keyplane.cli:", ":main", ""])
def test_run_entry_refuses_a_target_without_module_and_function(target: str) -> None:
    with pytest.raises(ValueError, match="MODULE:FUNCTION"):
        run_entry(target)


def test_python_m_keyplane_heap_runs_the_entry_with_the_collector_on_again(
        tmp_path: Path) -> None:
    (tmp_path / "probe_entry.py").write_text(
        "import gc\n"
        "PAUSED_AT_IMPORT = not gc.isenabled()\n"
        "def main():\n"
        "    print(PAUSED_AT_IMPORT, gc.isenabled(), gc.get_freeze_count() > 0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-m", "keyplane.heap", "probe_entry:main"],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["True", "True", "True"]


def test_python_m_keyplane_heap_needs_one_target() -> None:
    out = subprocess.run([sys.executable, "-m", "keyplane.heap"], capture_output=True,
                         text=True, check=False)
    assert out.returncode != 0
    assert "MODULE:FUNCTION" in out.stderr
