"""The operators' live dashboard: topology, link figures, sessions, alarms, Fig. 4 timeline.

:class:`~keyplane.dashboard.view.NetworkView` folds what the elements publish into the page's
model; :func:`~keyplane.dashboard.app.create_dashboard_app` serves it (page, JSON, server-sent
events, link controls); :class:`~keyplane.dashboard.feed.DashboardFeed` keeps it current from
the bus. Served by ``keyplane run`` and by the controller (docs/dashboard.md).
"""

from keyplane.dashboard.app import LinkControl, create_dashboard_app
from keyplane.dashboard.feed import DashboardFeed, bus_link_control
from keyplane.dashboard.view import NetworkView

__all__ = ["DashboardFeed", "LinkControl", "NetworkView", "bus_link_control",
           "create_dashboard_app"]
