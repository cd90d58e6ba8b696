"""VidPlan server: inference-time planning with an action-conditioned video world model (DROID setup)."""

from importlib import metadata as _metadata

try:
    #: The installed distribution's version (pyproject.toml), "unknown" when run from an uninstalled tree.
    __version__ = _metadata.version("vidplan-server")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree on PYTHONPATH
    __version__ = "unknown"
