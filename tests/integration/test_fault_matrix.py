"""The fault matrix of issue #14.6 on the distributed mode: a real secured nats-server, a
real PostgreSQL, the controller and three node processes (km1 - km0 - km2). While 2,000
relayed ETSI 014 keys flow (sae1 -> sae2, four request loops at once, spread around the
faults; ``KEYPLANE_FAULT_KEYS`` sets the number) and an ETSI 004 stream (sae3 <-> sae4)
fetches keys relayed over both hops, these faults come in turn, in one network: kill -9 the source KM, the
intermediate KM, the destination KM and the controller (each started again at once); stop
nats-server for 30 s; stop PostgreSQL for 10 s (each started again on the same port and
data). Before each fault the requests that spend link key pause until every link made a
stock (``MatrixSettings.stock_bytes``), so a fault finds key to resume with, and strike
once keys flow again; the nodes' link workers run at the KMs' priority (the devices they
stand in for do not slow down on a loaded host). Then: no key held at one end only, none handed out twice, no link key used for two
keys, no link held down by the Monitoring Element while it makes key, and delivery resumed
within ``KEYPLANE_FAULT_RESUME_BOUND_S`` (10 s, issue #14's target) of each fault's end.
No expected failure is left: every problem the matrix finds fails the test.

keyplane.faultmatrix explains what is measured; bench/faults.py prints the same table.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from keyplane.cluster import ClusterSettings
from keyplane.faultmatrix import MatrixSettings, run_matrix
from tests.support.deadlines import DEADLINE_S

pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.postgres,
              pytest.mark.slow, pytest.mark.timeout(max(1800, 6 * DEADLINE_S))]

KEYS_014 = int(os.environ.get("KEYPLANE_FAULT_KEYS", "2000"))
"""ETSI 014 keys the run completes at both ends (issue #14.6: "while 2,000 relayed keys
flow")."""
RESUME_BOUND_S = float(os.environ.get("KEYPLANE_FAULT_RESUME_BOUND_S", "10"))
"""Delivery must resume within this of each fault's end (a setting: issue #14's target by
default; the figure measured is printed either way)."""


async def test_fault_matrix_loses_and_duplicates_nothing_and_resumes(tmp_path: Path) -> None:
    logging.getLogger("keyplane.faultmatrix").setLevel(logging.INFO)
    settings = MatrixSettings(resume_bound_s=RESUME_BOUND_S, keys_014=KEYS_014,
                              resume_timeout_s=max(240.0, DEADLINE_S),
                              flowing_timeout_s=max(300.0, DEADLINE_S))
    report = await run_matrix(tmp_path, settings=settings,
                              cluster_settings=ClusterSettings(ready_timeout_s=DEADLINE_S))
    for r in report.results:
        print(f"{r.fault.name}: stock pause {r.stock_s} s, recovery {r.recovery_s:.1f} s, "
              f"outage {r.outage_s} s, "
              f"resumed {r.resumed_s} s after its end; phases after its end "
              f"{ {k: None if v is None else round(v, 1) for k, v in r.phases.items()} }")
    print(f"keys at both ends: {report.keys_014} over ETSI 014, {report.keys_004} over "
          f"ETSI 004; errors answered: {report.errors}")
    problems = {
        "application loop failed": report.crash,
        "processes exited on their own": report.exited,
        "keys stopped flowing": report.not_flowing,
        "faults applied": None if len(report.results) == 6 else len(report.results),
        "no key at both ends": None if report.keys_014 and report.keys_004 else
        (report.keys_014, report.keys_004),
        f"fewer than {KEYS_014} ETSI 014 keys at both ends": None
        if report.keys_014 >= KEYS_014 else report.keys_014,
        "ETSI 014 keys held at one end only": report.lost_014,
        "ETSI 004 indexes held at one end only": report.lost_004,
        "keys with other bytes at the other end": report.mismatched,
        "keys handed out twice": report.duplicated,
        "link key bytes used for two keys": report.link_key_reuse,
        "links the Monitoring Element held down while they made key": report.stale_alarms,
        f"delivery resumed later than {settings.resume_bound_s:g} s after the fault's end": {
            r.fault.name: r.resumed_s for r in report.results
            if r.resumed_s is None or r.resumed_s > settings.resume_bound_s},
    }
    problems = {k: v for k, v in problems.items() if v}
    print(f"keys held at one end only, by fault: {report.lost_by_fault}; links held down "
          f"while making key: {report.stale_alarms}")
    assert not problems, problems
