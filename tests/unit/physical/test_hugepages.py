"""Large-block links turn numpy's huge-page advice off (process-wide), unless the operator
chose it with ``NUMPY_MADVISE_HUGEPAGE``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_CODE = """
import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage
from keyplane.config import PostProcessing, QuantumLink
from keyplane.physical.channel import InProcessChannel
from keyplane.physical.modules import AliceModule
link = QuantumLink(endpoints=("a", "b"), length_km=10.0,
                   postprocessing=PostProcessing(block_size_bits={bits}))
c, q = InProcessChannel.pair(link.link_id)
AliceModule(link, c, q, np.random.default_rng(1))
print(_set_madvise_hugepage(True))
"""


@pytest.mark.parametrize(("bits", "env", "advice"), [
    (1_000_000, None, "False"),
    (100_000, None, "True"),
    (1_000_000, "1", "True"),
])
def test_large_blocks_turn_the_huge_page_advice_off(bits: int, env: str | None,
                                                    advice: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if env is not None:
        environ["NUMPY_MADVISE_HUGEPAGE"] = env
    out = subprocess.run([sys.executable, "-c", _CODE.format(bits=bits)], check=True,
                         capture_output=True, text=True, env=environ).stdout
    assert out.strip().splitlines()[-1] == advice
