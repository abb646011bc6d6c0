"""How long tests wait for something to become true, in one place.

Tests wait on events and readiness, never on sleeps; each wait still has a bound so that a
broken build fails instead of hanging. The bound is generous by default (a heavily
oversubscribed 2-core machine must pass) and a setting: ``KEYPLANE_TEST_DEADLINE_S``.
"""

from __future__ import annotations

import os

DEADLINE_S = float(os.environ.get("KEYPLANE_TEST_DEADLINE_S", "300"))
"""Upper bound of any wait for readiness or a condition in the tests, seconds."""
