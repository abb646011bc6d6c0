"""Import cost of the client SDK and of ``keyplane --help``: CPU, wall and modules loaded.

Each command runs in a fresh interpreter; CPU is user + system time of the child, which
does not depend much on how busy the machine is (wall does). ``--src DIR`` measures another
checkout's ``src`` (e.g. an older commit exported with ``git archive``) with this venv, and
several ``--src`` are interleaved run by run, so a before/after comparison sees the same load.

    python bench/imports.py                      # this checkout, 5 runs each
    python bench/imports.py --runs 9 --src /tmp/old/src --src src
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"import keyplane.client": ["-c", "import keyplane.client"],
         "keyplane --help": ["-m", "keyplane", "--help"]}


def _run(args: list[str], src: Path) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, check=True,
                   cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _modules(code: str, src: Path) -> int:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(len(sys.modules))"],
                         env=dict(os.environ, PYTHONPATH=str(src)), capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    return int(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", type=Path, action="append")
    opts = parser.parse_args()
    srcs = [s.resolve() for s in (opts.src or [ROOT / "src"])]
    print(f"$ python bench/imports.py --runs {opts.runs} "
          + " ".join(f"--src {s}" for s in srcs))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    got: dict[tuple[str, Path], list[tuple[float, float]]] = {}
    for _ in range(opts.runs):
        for case, args in CASES.items():
            for src in srcs:
                got.setdefault((case, src), []).append(_run(args, src))
    for (case, src), runs in got.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        code = "import keyplane.client" if case.startswith("import") else "import keyplane.cli"
        print(f"{case:24s} {src}: CPU min {min(cpus):.2f} median {statistics.median(cpus):.2f} s"
              f" | wall min {min(walls):.2f} median {statistics.median(walls):.2f} s"
              f" | {_modules(code, src)} modules")


if __name__ == "__main__":
    main()
