"""The dashboard in a real headless Chromium, used as an operator would: robots plan, the page follows.

Each test drives test robots (:class:`EpisodeRobot`: recorded sim episodes through ``POST /v1/plan``) against a
live server on the tiny bundle and checks what the page shows: sessions, a heatmap that is not blank and changes
with the next plan, switching sessions, the token, and the replay of a recorded run. The screenshot of the first
test goes to ``VIDPLAN_SCREENSHOTS`` when set (the README's picture: ``VIDPLAN_SCREENSHOTS=docs
VIDPLAN_DASHBOARD_CKPT=bundled``), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.serving.conftest import LiveServer
from tests.serving.dashboard.robots import EpisodeRobot
from tests.serving.doubles import StubPlanner
from vidplan_server.serving.config import ServiceConfig
from vidplan_server.serving.service import PlanService

WAIT_MS = 60_000  # a plan on a loaded 2-core machine can take seconds

#: Standard deviation of an image's pixel values (0 for a blank image), computed in the page.
SPREAD = """img => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let s = 0, s2 = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) { s += d[i + k]; s2 += d[i + k] ** 2; n++; }
  const m = s / n;
  return Math.sqrt(Math.max(s2 / n - m * m, 0));
}"""


def open_page(browser, url: str, problems: list[str]):
    """A new page at ``url``; console errors and uncaught exceptions are collected in ``problems``."""
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(url)
    return page


def spread(page, selector: str) -> float:
    page.wait_for_function(
        f"document.querySelector('{selector}').complete && document.querySelector('{selector}').naturalWidth > 0",
        timeout=WAIT_MS,
    )
    return page.eval_on_selector(selector, SPREAD)


def shot(page, tmp_path: Path, name: str) -> Path:
    """Screenshot of the page, palette-quantised to keep it small; into VIDPLAN_SCREENSHOTS when set."""
    from PIL import Image

    folder = Path(os.environ.get("VIDPLAN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def test_an_operator_watches_a_robot_plan_by_plan(browser, dashboard_server, short_episodes, tmp_path):
    problems: list[str] = []
    page = open_page(browser, f"{dashboard_server.http_url}/dashboard", problems)
    page.wait_for_selector("#status.ok", timeout=WAIT_MS)
    assert page.is_visible("#no-sessions") and page.text_content("#mode") == "live"
    left = EpisodeRobot(dashboard_server.http_url, "franka-left", short_episodes[0], num_proposals=12)
    right = EpisodeRobot(dashboard_server.http_url, "franka-right", short_episodes[1])
    left.plan(4)
    right.plan(4)

    # The session list shows both robots; the page selects one and shows its plan and heatmaps.
    page.wait_for_selector('#sessions tr[data-session="franka-left"]', timeout=WAIT_MS)
    page.wait_for_selector('#sessions tr[data-session="franka-right"]', timeout=WAIT_MS)
    page.click('#sessions tr[data-session="franka-left"]')
    page.wait_for_selector('#heatmap[data-session="franka-left"][data-sequence="1"]', timeout=WAIT_MS)
    assert page.inner_text("#d-session") == "franka-left"
    assert page.inner_text("#d-instruction") == short_episodes[0].language_instruction
    assert spread(page, "#heatmap") > 2.0 and spread(page, "#views") > 2.0  # pictures, not blank
    assert page.locator("#frames tr").count() == 5  # header + uncertainty, expected error, reward, value
    assert page.locator("#frames tr").first.locator("th").count() == 1 + dashboard_server.service.model.horizon
    assert page.locator("#proposals rect[data-kind]").count() == 12
    assert page.locator("#proposals .winner").count() == 1
    assert page.locator("#timings .timing").count() >= 5
    assert page.locator("#refinement polyline").count() == 1
    first = page.get_attribute("#heatmap", "src")

    # The next plan updates the detail and the heatmap.
    left.plan(12)
    page.wait_for_selector('#heatmap[data-session="franka-left"][data-sequence="2"]', timeout=WAIT_MS)
    assert page.inner_text("#d-seq") == "2" and page.get_attribute("#heatmap", "src") != first
    assert page.locator("#timeline polyline").count() == 3

    # The overlay toggles: per-pixel map (its own legend), raw prediction (no legend), back to the latent map.
    page.click('.toggle button[data-view="pixel"]')
    assert page.get_attribute("#heatmap", "data-view") == "pixel" and "pixel" in page.get_attribute(
        "#legend-bar", "class"
    )
    assert spread(page, "#heatmap") > 2.0
    page.click('.toggle button[data-view="predicted"]')
    assert page.get_attribute("#heatmap", "data-view") == "predicted" and not page.is_visible("#legend")
    page.click('.toggle button[data-view="latent"]')
    page.wait_for_selector("#s-ok >> text=/[1-9]/", timeout=WAIT_MS)  # the server panel counts plans
    path = shot(page, tmp_path, "dashboard.png")
    assert path.stat().st_size > 10_000
    assert problems == []
    page.close()


def test_switching_sessions_follows_the_other_robot(browser, dashboard_server, short_episodes):
    problems: list[str] = []
    a = EpisodeRobot(dashboard_server.http_url, "cell-a", short_episodes[0])
    b = EpisodeRobot(dashboard_server.http_url, "cell-b", short_episodes[1])
    a.plan(2)
    b.plan(2)
    page = open_page(browser, f"{dashboard_server.http_url}/dashboard", problems)
    for session, other in (("cell-a", "cell-b"), ("cell-b", "cell-a")):
        page.click(f'#sessions tr[data-session="{session}"]', timeout=WAIT_MS)
        page.wait_for_selector(f'#heatmap[data-session="{session}"]', timeout=WAIT_MS)
        assert page.inner_text("#d-session") == session
        assert page.get_attribute(f'#sessions tr[data-session="{session}"]', "class").split().count("selected") == 1
        assert "selected" not in page.get_attribute(f'#sessions tr[data-session="{other}"]', "class")
    b.plan(6)  # the selected session's next plan arrives; the other robot's plans do not change the detail
    a.plan(6)
    page.wait_for_selector('#heatmap[data-session="cell-b"][data-sequence="2"]', timeout=WAIT_MS)
    time.sleep(0.5)
    assert page.inner_text("#d-session") == "cell-b" and page.get_attribute("#heatmap", "data-session") == "cell-b"
    assert problems == []
    page.close()


def test_the_page_asks_for_the_token_and_never_puts_it_in_a_url(browser, short_episodes):
    token = "s3cret-operator-token"
    server = LiveServer(PlanService(StubPlanner(), ServiceConfig()), token=token).wait_started()
    try:
        EpisodeRobot(server.http_url, "guarded", short_episodes[0], token=token).plan(2)
        urls: list[str] = []
        page = open_page(browser, f"{server.http_url}/dashboard", [])
        page.on("request", lambda r: urls.append(r.url))
        page.wait_for_selector("#login", state="visible", timeout=WAIT_MS)
        assert page.locator('#sessions tr[data-session="guarded"]').count() == 0
        page.fill("#token", "wrong")
        page.click("#login button")
        page.wait_for_selector("#login-error >> text=refused", timeout=WAIT_MS)
        page.fill("#token", token)
        page.click("#login button")
        page.wait_for_selector('#sessions tr[data-session="guarded"]', timeout=WAIT_MS)
        page.wait_for_selector('#views[src^="data:image/png"]', timeout=WAIT_MS)
        assert not page.is_visible("#login") and page.inner_text("#status") == "live"
        assert urls and not any(token in url for url in urls)
        page.reload()  # the tab remembers the token (sessionStorage), not the URL
        page.wait_for_selector('#sessions tr[data-session="guarded"]', timeout=WAIT_MS)
        page.close()
    finally:
        server.close()


def test_replay_steps_through_a_recorded_run(browser, dashboard_server, short_episodes, tmp_path):
    from vidplan_server.apps.dashboard.command import ReplayServer
    from vidplan_server.serving.dashboard.monitor import DashboardMonitor
    from vidplan_server.serving.dashboard.planlog import PlanLogWriter, find_log

    monitor = DashboardMonitor.of(dashboard_server.service)
    writer = PlanLogWriter(tmp_path / "run" / "planlog.jsonl")
    monitor.add_sink(writer)
    robot = EpisodeRobot(dashboard_server.http_url, "recorded", short_episodes[1])
    try:
        for sequence, step in enumerate((2, 8, 14), 1):
            robot.plan(step)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                e["type"] == "render" and e["sequence"] == sequence
                for e in map(json.loads, writer.path.read_text().splitlines())
            ):
                time.sleep(0.1)
    finally:
        monitor.sinks.remove(writer)
        writer.close()

    replay = ReplayServer(find_log(tmp_path / "run")).start()
    try:
        problems: list[str] = []
        page = open_page(browser, f"{replay.url}/dashboard", problems)
        page.wait_for_selector("#replay", state="visible", timeout=WAIT_MS)
        assert page.text_content("#mode") == "replay"
        page.wait_for_selector('#heatmap[data-session="recorded"][data-sequence="1"]', timeout=WAIT_MS)
        assert "plan 1 of 3" in page.inner_text("#r-time") and spread(page, "#heatmap") > 2.0
        page.click("#r-next")
        page.wait_for_selector('#heatmap[data-sequence="2"]', timeout=WAIT_MS)
        assert "plan 2 of 3" in page.inner_text("#r-time") and page.inner_text("#d-seq") == "2"
        page.click("#r-prev")
        page.wait_for_selector('#heatmap[data-sequence="1"]', timeout=WAIT_MS)
        page.eval_on_selector("#r-slider", "s => { s.value = s.max; s.dispatchEvent(new Event('input')); }")
        page.wait_for_selector('#heatmap[data-sequence="3"]', timeout=WAIT_MS)
        assert "plan 3 of 3" in page.inner_text("#r-time")
        assert page.locator("#timeline circle").count() >= 3  # the timeline up to the cursor
        assert problems == []
        page.close()
    finally:
        replay.stop()
