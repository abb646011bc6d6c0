"""Prometheus series of a ``keyplane device``: what each end of the device holds and hands out.

The link's own series (secret key rate, QBER, up, distilled bits) come from its telemetry,
as on every process (:class:`~keyplane.ops.network.NetworkMetrics`); the ETSI 014 servers
report requests, statuses and latency through :attr:`keyplane.ops.Ops.http`. What only a
device knows is read here, at scrape time, from its ends (:class:`DeviceKme`):

* ``keyplane_device_keys{link,node,kind}``: keys an end holds, ``kind="stored"`` for its
  SAE's ``enc_keys``, ``kind="unclaimed"`` waiting for its SAE's ``dec_keys``;
* ``keyplane_device_keys_delivered_total{link,node}``: keys the end handed to its SAE;
* ``keyplane_device_keys_expired_total{link,node}``: keys the other end delivered that this
  end's SAE never asked for within the device's ``unclaimed_ttl_s`` (lost to both ends).

A collector rather than gauges set on the loop: the figures are plain integers kept by the
ends, so reading them at scrape time (in the scrape's thread; ``len`` and ``int`` reads are
atomic under the GIL) is always current and costs nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keyplane.device.kme import DeviceKme

__all__ = ["DEVICE_SERIES", "DeviceMetrics"]

DEVICE_SERIES: dict[str, str] = {
    "keyplane_device_keys": "Keys an end of a QKD device holds (stored: for its SAE's "
                            "enc_keys; unclaimed: waiting for its SAE's dec_keys)",
    "keyplane_device_keys_delivered": "Keys an end of a QKD device handed to its SAE",
    "keyplane_device_keys_expired": "Keys the other end delivered that this end's SAE did not "
                                    "claim in time",
}
"""Every series of this module (counters without their ``_total``), with its help."""


class DeviceMetrics(Collector):
    """The ends of one device as Prometheus series (see the module docstring).

    Args:
        ends: the device's local ends.
    """

    def __init__(self, ends: Iterable[DeviceKme]) -> None:
        self.ends = list(ends)

    def collect(self) -> Iterator[Metric]:
        """One family per series, a sample per end (two per end for the key levels)."""
        keys = GaugeMetricFamily("keyplane_device_keys", DEVICE_SERIES["keyplane_device_keys"],
                                 labels=["link", "node", "kind"])
        delivered = CounterMetricFamily(
            "keyplane_device_keys_delivered", DEVICE_SERIES["keyplane_device_keys_delivered"],
            labels=["link", "node"])
        expired = CounterMetricFamily(
            "keyplane_device_keys_expired", DEVICE_SERIES["keyplane_device_keys_expired"],
            labels=["link", "node"])
        for end in self.ends:
            where = [end.link_id, end.node_id]
            keys.add_metric([*where, "stored"], end.stored_keys)
            keys.add_metric([*where, "unclaimed"], end.unclaimed_keys)
            delivered.add_metric(where, end.keys_delivered)
            expired.add_metric(where, end.keys_expired)
        yield from (keys, delivered, expired)
