"""The operator dashboard: live uncertainty heatmaps of every robot session, in the browser.

``vidplan serve`` serves it at ``GET /dashboard`` on its HTTP port; ``vidplan dashboard --replay DIR`` shows a
recorded run. Parts: :mod:`.monitor` (the plan service's observer: sessions, watchers, event fan-out),
:mod:`.board` (per-session figures), :mod:`.render` (heatmaps of watched sessions, off the critical path),
:mod:`.events` (the JSON events), :mod:`.routes` (HTTP), :mod:`.planlog` (recorded runs) and ``static/`` (the
page: plain HTML, CSS and JavaScript, no build step, nothing fetched from elsewhere).
"""

from vidplan_server.serving.dashboard.config import DashboardConfig

__all__ = ["DashboardConfig"]
