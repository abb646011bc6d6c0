"""Every command's --help: each option and argument explained, flags shown as flags."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from keyplane.cli import app

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


def _commands(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    """Every command under ``cmd`` (typer vendors click: duck-typed, not click's classes)."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not sub.hidden:
            yield from _commands(sub, [*path, name])


def _context(cmd: Any, name: str) -> Any:
    return cmd.context_class(cmd, info_name=name)


def test_every_option_and_argument_of_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    missing = []
    seen = 0
    for path, cmd in _commands(root, ["keyplane"]):
        ctx = _context(cmd, path[-1])
        for param in cmd.get_params(ctx):
            seen += 1
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0] if param.opts else param.name}")
    assert seen > 50  # the walk reached the sub-commands (link, key, ...)
    assert missing == []


def test_every_command_says_what_it_does() -> None:
    root = typer.main.get_command(app)
    commands = list(_commands(root, ["keyplane"]))
    assert len(commands) > 20
    silent = [" ".join(path) for path, cmd in commands
              if not (cmd.help or cmd.short_help or "").strip()]
    assert silent == []


def test_help_shows_flags_as_flags_and_lists_every_command() -> None:
    root = typer.main.get_command(app)
    for path, _ in _commands(root, ["keyplane"]):
        res = runner.invoke(app, [*path[1:], "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, path
    demo = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--live\s+--no-live\s+Live", demo)
    assert re.search(r"--distributed\s+One process per element", demo)


def test_validate_prints_its_verdict_on_stdout() -> None:
    res = runner.invoke(app, ["validate", str(ROOT / "examples" / "paper_poc.yaml")])
    assert res.exit_code == 0
    assert "ok paper-poc: 6 nodes, 6 links" in res.stdout
    assert res.stderr == ""
