"""The operator dashboard in headless Chromium against a real node: refused without the
operator key, logged in by the form (the key never lands in the URL), and its charts follow
joins as they happen."""

from __future__ import annotations

from pathlib import Path

import httpx
import matplotlib.image
from playwright.sync_api import Page

from tests.web.browser import wait_for

KEY = "dashboard-test-key"


def test_dashboard_needs_the_key_then_charts_follow_joins(serve, page: Page, tmp_path: Path) -> None:
    server = serve("--operator-key", KEY)
    space, _ = server.create("Dashboard")
    # without the key: the login form (401), and no data
    anonymous = server.http.get("/dashboard")
    assert anonymous.status_code == 401 and 'action="/dashboard/login"' in anonymous.text
    assert server.http.get("/dashboard/stream").status_code == 401
    wrong = server.http.post("/dashboard/login", data={"key": "not-it"})
    assert wrong.status_code == 401 and "not this node's operator key" in wrong.text
    with httpx.stream("GET", f"{server.url}/dashboard/stream", headers={"authorization": f"Bearer {KEY}"},
                      timeout=10) as stream:  # an API client may use the key as a bearer token
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")

    page.goto(f"{server.url}/dashboard")
    assert page.locator("#key").is_visible()
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/dashboard")
    assert KEY not in page.url
    cookie = next(c for c in page.context.cookies() if c["name"] == "amphi_operator")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
    wait_for("the dashboard stream", lambda: page.evaluate("window.amphiDashboard.connected"), 15)
    wait_for("the first node sample", lambda: page.evaluate("window.amphiDashboard.series.has('node')"), 15)

    for _ in range(4):  # four listeners arrive: the Space gets a series, its charts and counters move
        assert server.http.post(f"/api/spaces/{space}/join", json={}).status_code == 200
    wait_for("the Space in the picker", lambda: page.locator(f"#series option[value='{space}']").count() == 1, 15)
    page.select_option("#series", space)
    wait_for("4 listeners on the dashboard", lambda: page.locator("#stat-listeners").inner_text() == "4", 15)
    points = page.evaluate("""(id) => {
        const list = window.amphiDashboard.series.get(id);
        return {listeners: list.map((s) => s.listeners), admitted: list.at(-1).joins.admitted};
    }""", space)
    assert points["listeners"][-1] == 4 and points["admitted"] == 4
    wait_for("a joins chart with data", lambda: page.evaluate(
        "document.querySelectorAll('#chart-joins canvas').length > 0"), 5)
    assert page.locator("#events li").filter(has_text=f"space {space} created (scheduled)").count() == 1
    span = page.evaluate("(() => { const x = window.amphiDashboard.charts['chart-audience'].scales.x; return x.max - x.min; })()")
    assert 60 <= span < 3600, span  # the last minute or so, not 1,000 days around a lone first sample

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    image = matplotlib.image.imread(shot)
    assert image.shape[0] >= 768 and image.shape[1] == 1024
    assert image.std() > 0.05 and shot.stat().st_size > 30_000  # charts and text, not a blank page

    page.click("text=Log out")
    page.wait_for_url(f"{server.url}/dashboard")
    assert page.locator("#key").is_visible()  # back at the login form
