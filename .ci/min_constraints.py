"""Print a pip constraints file pinning every dependency of pyproject.toml to its lower bound.

Used by ``.ci/min-versions``. A bound such as ``pytest-timeout>=2.3`` names no release
(2.3.0 was never published), so each bound is pinned to the lowest *released* version that
satisfies it, as ``pip index versions`` lists them (the package index pip is configured
with). ``--check`` instead verifies that the installed versions are those pins.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]


def lower_bounds() -> dict[str, Requirement]:
    """``{distribution: requirement}`` of each dependency with a lower bound (every extra but
    bench; a distribution named twice keeps its tightest lower bound)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra != "bench":  # bench/physical.py's outside tool, not a keyplane dependency
            reqs += items
    bounds: dict[str, Requirement] = {}
    for text in reqs:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "keyplane" or not _low(req):
            continue
        if name not in bounds or _low(req) > _low(bounds[name]):
            bounds[name] = req
    return bounds


def _low(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def lowest_release(req: Requirement) -> str:
    """The lowest published final release satisfying ``req`` (pip's index)."""
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", req.name],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Available versions: (.*)", out)
    if match is None:
        raise SystemExit(f"pip index versions {req.name}: no versions listed")
    releases = []
    for text in match.group(1).split(","):
        try:
            v = Version(text.strip())
        except InvalidVersion:
            continue
        if not v.is_prerelease and req.specifier.contains(v):
            releases.append(v)
    if not releases:
        raise SystemExit(f"no release of {req.name} satisfies {req.specifier}")
    return str(min(releases))


def main() -> int:
    bounds = lower_bounds()
    if sys.argv[1:2] == ["--check"]:
        pins = dict(line.split("==") for line in Path(sys.argv[2]).read_text().split())
        wrong = []
        for name, pin in sorted(pins.items()):
            try:
                got = version(name)
            except PackageNotFoundError:
                wrong.append(f"{name}: not installed")
                continue
            if Version(got) != Version(pin):
                wrong.append(f"{name}: {got} installed, {pin} wanted")
        for line in wrong:
            print(line, file=sys.stderr)
        return 1 if wrong else 0
    for name, req in sorted(bounds.items()):
        print(f"{name}=={lowest_release(req)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
