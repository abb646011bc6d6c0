"""The twin beside the key managers (issue 21's Done-when), measured in one run.

1. ``keyplane run -t examples/paper_poc.yaml`` as a child process (links in worker
   processes). After ``--warmup`` seconds:
   * **idle CPU** of the ``keyplane run`` process itself (workers excluded) over
     ``--idle-seconds`` with no application calling, as % of one core, and the workers' CPU
     over the same window;
   * **relayed ETSI 014 pairs/s**: sae2 (km2) asks enc_keys(number=1) for sae3 (km3, relayed
     through km0), sae3 asks dec_keys for the same key_ID, ``--concurrency`` loops for
     ``--seconds`` over HTTPS with mutual TLS (the SDK's async client).
2. ``python bench/api.py`` between two such relayed measurements (the load drifts), same
   seconds and concurrency, ``keyplane run`` still up: its 2-hop number=1 pairs/s (the same
   KM and API without the twin), and the ratio to the relayed mean (target >= 0.7).
3. ``keyplane demo`` ``--demo-runs`` times (embedded, bb84-decoy links, 8 keys per pair)
   while ``--busy`` busy-loop processes oversubscribe the cores: exit codes, and the first
   relayed key (sae2-sae3 through KM0, from the demo's start and from OPEN_CONNECT) p50 and
   max; and, followed in ``events.jsonl``, the CPU seconds the demo process and its link
   workers had used from their exec when both ends had that key (``/proc``), the figure the
   machine's other load moves least.

    python bench/southbound.py [--seconds 10] [--concurrency 4] [--demo-runs 10] [--busy 4]
    python bench/southbound.py --demo-only --demo-runs 10 --busy 4

Prints figures with the command, machine and load; never asserts. With the kernel's
scheduler autogroups on (``/proc/sys/kernel/sched_autogroup_enabled``), nice values only
order the processes of one session, and each session shares the CPU equally with every
other busy one: on a machine other jobs load, run this in its own session with a raised
autogroup priority so that its busy loops, not the other jobs, make the load (the bench
prints its autogroup)::

    setsid sh -c 'echo -15 > /proc/self/autogroup; exec python bench/southbound.py ...'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from keyplane.api.client import AsyncEtsi014Client, ServiceUnavailableError  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` itself (children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _autogroup() -> str:
    """This process's scheduler autogroup and its nice value, if autogroups are on."""
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
            return "scheduler autogroups off"
        return f"scheduler autogroup {Path('/proc/self/autogroup').read_text().strip()}"
    except OSError:
        return "scheduler autogroups unknown"


def _start_run(state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "keyplane", "run", "-t",
                             str(ROOT / "examples" / "paper_poc.yaml"), "-s", str(state)],
                            stdout=subprocess.PIPE, stderr=open(state / "run.log", "w"),
                            text=True, env=_env(), cwd=ROOT)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "keyplane running" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(300):
        proc.kill()
        raise SystemExit("keyplane run did not start within 300 s")
    return proc


async def _pairs(state: Path, seconds: float, concurrency: int) -> tuple[int, float, int]:
    """(pairs, elapsed seconds, 503 answers) of relayed enc+dec pairs sae2 -> sae3."""
    master = AsyncEtsi014Client.from_state(state, "sae2", timeout_s=30.0)
    slave = AsyncEtsi014Client.from_state(state, "sae3", timeout_s=30.0)
    async with master, slave:
        deadline = time.monotonic() + 120
        while True:  # the first relayed key opens the implicit session: not timed
            try:
                keys = await master.enc_keys("sae3", number=1)
                await slave.dec_keys("sae2", [keys[0].key_id])
                break
            except ServiceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        done, busy = 0, 0
        t0 = time.monotonic()
        end = t0 + seconds

        async def loop() -> None:
            nonlocal done, busy
            while time.monotonic() < end:
                try:
                    k = await master.enc_keys("sae3", number=1)
                    await slave.dec_keys("sae2", [k[0].key_id])
                    done += 1
                except ServiceUnavailableError:
                    busy += 1
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done, time.monotonic() - t0, busy


def _bench_api(seconds: float, concurrency: int) -> float | None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "api.py"),
                          "--seconds", str(seconds), "--concurrency", str(concurrency)],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, check=False)
    m = re.search(r"^2-hop\s+1\s+(\d+)", out.stdout, re.MULTILINE)
    if m is None:
        print(f"#   bench/api.py gave no 2-hop figure: {out.stderr.strip()[-300:]}")
        return None
    return float(m.group(1))


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (the demo's link workers)."""
    out: list[int] = []
    todo = _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


@dataclass
class _FirstKey:
    """The demo process's and its workers' CPU seconds when both ends of the relayed
    session (sae2-sae3 through KM0) had their first key, from ``events.jsonl``."""

    demo_cpu_s: float
    workers_cpu_s: float
    demo_cpu_at_start_s: float
    """The demo process's CPU when its events.jsonl appeared (imports, before its t0)."""
    workers: int
    wall_s: float


def _follow(proc: subprocess.Popen[str], events: Path, t0: float) -> _FirstKey | None:
    """Follow ``events`` while ``proc`` runs; CPU figures at the first relayed key."""
    relayed: set[str] = set()
    delivered: dict[str, int] = {}
    buf = ""
    pos = 0
    at_start: float | None = None
    while proc.poll() is None:
        if at_start is None and events.exists():
            at_start = _cpu_s(proc.pid)
        try:
            with events.open() as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            chunk = ""
        buf += chunk
        *lines, buf = buf.split("\n")
        for line in lines:
            e = json.loads(line)
            sid = e.get("session")
            if e["type"] == "key_relayed" and e["data"].get("direct") is False:
                relayed.add(sid)
            elif e["type"] == "key_delivered" and sid in relayed:
                delivered[sid] = delivered.get(sid, 0) + 1
                if delivered[sid] == 2:  # both ends: what the demo counts as its first key
                    workers = _descendants(proc.pid)
                    return _FirstKey(_cpu_s(proc.pid), sum(_cpu_s(w) for w in workers),
                                     at_start or 0.0, len(workers), time.monotonic() - t0)
        time.sleep(0.02)  # polling a file another process appends to
    return None


def _demo_runs(runs: int, busy: int) -> None:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    firsts: list[float] = []
    from_open: list[float] = []
    cpus: list[_FirstKey] = []
    codes: list[int] = []
    try:
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix="keyplane-demo-") as tmp:
                out = str(Path(tmp) / "out")  # the demo refuses a directory with files
                t0 = time.monotonic()
                log = Path(tmp) / "stderr.log"
                with log.open("w") as errf:
                    p = subprocess.Popen([sys.executable, "-m", "keyplane", "demo",
                                          "--no-live", "-o", out, "--seed", str(i + 1)],
                                         stdout=subprocess.DEVNULL, stderr=errf, text=True,
                                         env=_env(), cwd=ROOT)
                    fk = _follow(p, Path(out) / "events.jsonl", t0)
                    p.wait()
                got = log.read_text().splitlines()
                wall = time.monotonic() - t0
                codes.append(p.returncode)
                first = opened = None
                summary = Path(out) / "summary.json"
                if summary.exists():
                    doc = json.loads(summary.read_text())
                    relayed = next((s for s in doc["sessions"] if s["pair"] == "sae2-sae3"),
                                   {})
                    first, opened = relayed.get("time_to_first_key_s"), relayed.get("opened_s")
                if first is not None:
                    firsts.append(first)
                    if opened is not None:
                        from_open.append(first - opened)
                cpu = ""
                if fk is not None:
                    cpus.append(fk)
                    cpu = (f", CPU to it: demo process {fk.demo_cpu_s:.2f} s "
                           f"({fk.demo_cpu_at_start_s:.2f} s before its start), "
                           f"{fk.workers} workers {fk.workers_cpu_s:.2f} s "
                           f"(from exec {fk.wall_s:.2f} s)")
                err = [ln.strip() for ln in got][-1:] if p.returncode else []
                print(f"demo run {i + 1}: exit {p.returncode}, first relayed key "
                      f"{first if first is None else f'{first:.2f} s'}{cpu}, wall {wall:.1f} s "
                      f"{' '.join(err)}", flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    ok = sum(1 for c in codes if c == 0)
    if firsts:
        print(f"demo: {ok}/{runs} runs exit 0 with {busy} busy loops on {os.cpu_count()} cores;"
              f" first relayed key (from the demo's start) p50 {statistics.median(firsts):.2f} s,"
              f" max {max(firsts):.2f} s; from its OPEN_CONNECT p50 "
              f"{statistics.median(from_open):.2f} s; load average now "
              f"{os.getloadavg()[0]:.1f}")
    else:
        print(f"demo: {ok}/{runs} runs exit 0; no first relayed key measured")
    if cpus:
        med = statistics.median
        print(f"demo: CPU to the first relayed key (process CPU from exec, p50): demo process "
              f"{med(c.demo_cpu_s for c in cpus):.2f} s (after its start "
              f"{med(c.demo_cpu_s - c.demo_cpu_at_start_s for c in cpus):.2f} s), "
              f"link workers together "
              f"{med(c.workers_cpu_s for c in cpus):.2f} s, sum "
              f"{med(c.demo_cpu_s + c.workers_cpu_s for c in cpus):.2f} s; first relayed key "
              f"from the demo's exec (imports included) p50 {med(c.wall_s for c in cpus):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--demo-runs", type=int, default=10)
    ap.add_argument("--busy", type=int, default=4)
    ap.add_argument("--demo-only", action="store_true",
                    help="only the keyplane demo runs (part 3)")
    args = ap.parse_args()
    print(f"command: python bench/southbound.py --seconds {args.seconds:g} --concurrency "
          f"{args.concurrency} --warmup {args.warmup:g} --idle-seconds {args.idle_seconds:g} "
          f"--demo-runs {args.demo_runs} --busy {args.busy}"
          f"{' --demo-only' if args.demo_only else ''}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {_autogroup()}")
    if args.demo_only:
        _demo_runs(args.demo_runs, args.busy)
        return
    with tempfile.TemporaryDirectory(prefix="keyplane-sb-") as tmp:
        state = Path(tmp)
        proc = _start_run(state)
        try:
            time.sleep(args.warmup)  # a benchmark's warm-up period, not a synchronisation
            workers = _children(proc.pid)
            own0, w0, t0 = _cpu_s(proc.pid), sum(_cpu_s(p) for p in workers), time.monotonic()
            time.sleep(args.idle_seconds)  # the idle window being measured
            dt = time.monotonic() - t0
            own = (_cpu_s(proc.pid) - own0) / dt
            wcpu = (sum(_cpu_s(p) for p in workers) - w0) / dt
            print(f"idle: keyplane run process {100 * own:.1f} % of a core (workers excluded);"
                  f" {len(workers)} link workers {100 * wcpu:.1f} % together")
            rates = []
            api = None
            for turn in ("before", "after"):  # bracket bench/api.py: the load drifts
                pairs, el, busy = asyncio.run(_pairs(state, args.seconds, args.concurrency))
                rates.append(pairs / el)
                print(f"relayed ETSI 014 on keyplane run (sae2 -> km2 -> km0 -> km3 -> sae3),"
                      f" {turn}: {pairs / el:.1f} pairs/s ({pairs} pairs in {el:.1f} s, "
                      f"{busy} answers 503)", flush=True)
                if turn == "before":
                    api = _bench_api(args.seconds, args.concurrency)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    relayed = statistics.mean(rates)
    if api:
        print(f"bench/api.py (same KM and API, no twin), 2-hop number=1: {api:.0f} pairs/s; "
              f"ratio {relayed / api:.2f} (target >= 0.7)")
    if args.demo_runs:
        _demo_runs(args.demo_runs, args.busy)


if __name__ == "__main__":
    main()
