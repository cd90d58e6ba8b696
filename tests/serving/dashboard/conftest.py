"""Fixtures of the dashboard tests: a real Chromium (Debian's, driven by Playwright) and a live server on a bundle.

The browser is Debian's ``chromium`` (``.ci/run`` installs it; ``VIDPLAN_CHROMIUM`` names another binary), never a
browser Playwright downloads. Without it, or without Playwright, the browser tests are skipped and say why.
The planner is the tiny test bundle's; ``VIDPLAN_DASHBOARD_CKPT=bundled`` (or a folder) runs the same tests on
another one, which is how the README's screenshot is taken (``VIDPLAN_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.serving.conftest import LiveServer
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.service import PlanService


def chromium_path() -> str | None:
    given = os.environ.get("VIDPLAN_CHROMIUM")
    if given:
        return given
    return next(filter(None, (shutil.which(name) for name in ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the module (skipped with the reason when there is none)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set VIDPLAN_CHROMIUM)")
    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        chromium = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--headless=new"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dashboard_planner(tiny_heads_bundle):
    """The planner the browser tests watch: the tiny bundle's (or VIDPLAN_DASHBOARD_CKPT's)."""
    from vidplan_server.planning.planner import Planner

    choice = os.environ.get("VIDPLAN_DASHBOARD_CKPT")
    if choice == "bundled":
        return Planner.load(None)
    return Planner.load(choice or tiny_heads_bundle)


@pytest.fixture(scope="module")
def dashboard_server(dashboard_planner):
    server = LiveServer(PlanService(dashboard_planner, ServiceConfig(max_queue=8))).wait_started()
    yield server
    server.close()
