"""The live views in a real browser: Debian's Chromium, headless, driven by Playwright, against
`edge web` and the shipped hub broker. A step change appears without a reload; the offline
banner replaces the data when the broker or the server goes away. Screenshots of each view go
to tests/artifacts/web/ (listed at the end of the run).

Chromium missing is a failure, never a skip: `make test` installs it (Makefile APT_PACKAGES)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_kit import SCREENSHOTS, STAND, Nodes, Visitor, WebServer, artifact, jpeg

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OFFLINE = re.compile(r"^Offline since \d\d:\d\d$")
WAIT_MS = 15_000


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(apt-get install chromium, or `make test`, which installs it)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]' (never `playwright install`: the tests "
                    f"drive {CHROMIUM})", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Pages:
    """New pages, each in a fresh context (no cache, no cookies) of the size asked; any page's
    JavaScript error fails the test."""

    def __init__(self, chromium: Any):
        self.chromium = chromium
        self.contexts: list[Any] = []
        self.errors: list[str] = []
        self.requested: list[str] = []

    def new_page(self, viewport: dict[str, int] | None = None, device_scale_factor: float = 1) -> Any:
        context = self.chromium.new_context(viewport=viewport or {"width": 1280, "height": 900},
                                            device_scale_factor=device_scale_factor)
        context.on("request", lambda request: self.requested.append(request.url))
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browser(chromium: Any) -> Iterator[Pages]:
    pages = Pages(chromium)
    yield pages
    pages.close()
    assert not pages.errors, pages.errors


def shot(page: Any, name: str, full: bool = True) -> Path:
    path = artifact(name)
    page.screenshot(path=str(path), full_page=full)
    SCREENSHOTS.append(path)
    print(f"screenshot: {path}")
    return path


def until(check: Any, what: str, timeout: float = 10) -> None:
    """Poll from here: the pages' Content-Security-Policy forbids Playwright's wait_for_function."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def banner(page: Any) -> str:
    return page.locator("#banner").inner_text() if page.locator("#banner").is_visible() else ""


def test_the_line_shows_a_step_change_without_a_reload(web: WebServer, nodes: Nodes, browser: Pages):
    nodes.all_idle()
    v, w = Visitor.make("B1", "Camille Dupont", "red"), Visitor.make("B2", "Zoé", "blue")
    nodes.job(v, {"intake": "done", "laser": "running"}, progress={"laser": 35})
    nodes.node("laser-1", "busy", job=v.pid, progress=35)
    nodes.job(w, {"intake": "done"})
    page = browser.new_page()
    page.goto(web.url + "/")
    laser = page.locator('.station[data-kind="laser"]')
    assert laser.locator(".node-state").inner_text().lower() == "working"
    assert laser.locator(f'.chip[data-job="{v.pid}"] .name').inner_text() == "C."
    assert page.locator(".trades li").count() == 40
    page.evaluate("window.sameDocument = true")

    nodes.job(v, {"intake": "done", "laser": "done", "printer": "running"}, progress={"printer": 20}, by="laser-1")
    nodes.node("laser-1", "idle")
    nodes.node("printer-1", "busy", job=v.pid, progress=20)
    page.wait_for_selector(f'.job-list li[data-job="{v.pid}"] .dot[data-step="laser"][data-status="done"]',
                           timeout=WAIT_MS)
    page.wait_for_selector('.station[data-kind="printer"][data-state="busy"]', timeout=WAIT_MS)
    assert page.evaluate("window.sameDocument") is True  # no reload
    assert page.locator(f'.job-list li[data-job="{v.pid}"] .where').inner_text() == "at 3D printing"
    assert "Camille" not in page.content()
    assert banner(page) == ""
    shot(page, "line.png")


def test_a_visitors_phone_follows_their_stand_to_the_inspection_picture(web: WebServer, nodes: Nodes,
                                                                       browser: Pages):
    v = Visitor.make("P1", "Zoé Dupont", "green")
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone.goto(web.url + v.url_path)
    assert phone.locator("#text").inner_text() == "Zoé Dupont"
    assert phone.locator(".engraving-svg path").count() == 1
    assert "not on the line yet" in phone.locator(".headline").inner_text()

    nodes.job(v, {"intake": "done", "laser": "running"}, progress={"laser": 60})
    phone.wait_for_selector('.step[data-step="laser"][data-status="running"]', timeout=WAIT_MS)
    assert phone.locator(".headline").inner_text() == "Your stand is at Laser engraving (60 %)"
    nodes.job(v, {s: "done" for s in STAND[:4]} | {"inspection": "running"}, progress={"inspection": 50})
    phone.wait_for_selector('.step[data-step="printer"][data-status="done"]', timeout=WAIT_MS)
    assert phone.locator('.step[data-step="printer"] .step-time').inner_text() != ""
    nodes.snapshot(v, jpeg((40, 140, 60)), "pass")
    phone.wait_for_selector(".snapshot img", timeout=WAIT_MS)
    until(lambda: phone.locator(".snapshot img").evaluate("img => img.complete && img.naturalWidth") == 480,
          "the picture loaded")
    assert "passed" in phone.locator(".snapshot figcaption").inner_text()
    shot(phone, "visitor.png")

    public = browser.new_page()
    public.goto(f"{web.url}/job/{v.pid}")
    public.wait_for_selector('.step[data-step="inspection"][data-status="running"]', timeout=WAIT_MS)
    assert public.locator(".job-title").inner_text().startswith("Z.")
    assert "Dupont" not in public.content() and public.locator(".snapshot").count() == 0
    shot(public, "job.png")


def test_the_big_screen_cycles_through_the_jobs_on_the_line(web: WebServer, nodes: Nodes, browser: Pages):
    nodes.all_idle()
    visitors = [Visitor.make(f"C{i}", name, colour) for i, (name, colour) in
                enumerate([("Léa", "red"), ("Noël", "blue"), ("Inès", "white")])]
    for i, v in enumerate(visitors):
        nodes.job(v, dict(zip(STAND, ["done"] * i + ["running"], strict=False)), progress={STAND[i]: 50},
                  created_ms=1_795_305_600_000 + i)
    nodes.node("laser-1", "busy", job=visitors[1].pid, progress=50)
    screen = browser.new_page(viewport={"width": 1920, "height": 1080})
    screen.goto(web.url + "/screen?cycle=1")
    seen, deadline = [], time.monotonic() + 10
    while len(set(seen)) < 3 and time.monotonic() < deadline:
        seen.append(screen.locator(".spot").get_attribute("data-job"))
        screen.wait_for_timeout(100)
    assert set(seen) == {v.pid for v in visitors}, seen
    assert len(set(seen[:5])) == 1  # a job stays up for its cycle (1 s here)
    assert screen.locator(".strip .cell").count() == len(STAND)
    screen.goto(web.url + "/screen?cycle=600")
    screen.wait_for_selector(".spot .spot-steps")
    shot(screen, "screen.png", full=False)


def test_the_offline_banner_replaces_the_line_when_the_broker_stops(web: WebServer, nodes: Nodes, hub: Any,
                                                                   browser: Pages):
    nodes.all_idle()
    v = Visitor.make("D1", "Anaïs")
    nodes.job(v, {"intake": "done", "laser": "running"})
    page = browser.new_page()
    page.goto(web.url + "/")
    page.wait_for_selector(f'.job-list li[data-job="{v.pid}"]')
    assert banner(page) == ""
    nodes.close()
    hub.kill()
    page.wait_for_selector("#banner:not([hidden])", timeout=WAIT_MS)
    assert OFFLINE.match(banner(page)), banner(page)
    assert page.locator(".jobs").evaluate("e => getComputedStyle(e).visibility") == "hidden"
    assert page.locator(".trades").first.is_visible()  # what never changes stays
    shot(page, "offline.png")

    hub.start()
    Nodes(hub).job(v, {"intake": "done", "laser": "done", "printer": "running"})
    page.wait_for_selector("#banner[hidden]", state="attached", timeout=WAIT_MS)
    page.wait_for_selector(f'.job-list li[data-job="{v.pid}"] .dot[data-step="printer"][data-status="running"]',
                           timeout=WAIT_MS)
    assert page.locator(".jobs").evaluate("e => getComputedStyle(e).visibility") == "visible"


def test_a_page_notices_its_server_is_gone_and_comes_back_with_it(web: WebServer, nodes: Nodes, browser: Pages,
                                                                  tmp_path: Path):
    v = Visitor.make("E1", "Théo")
    nodes.job(v, {"intake": "done"})
    page = browser.new_page()
    page.goto(f"{web.url}/job/{v.pid}")
    page.wait_for_selector('.job[data-status="in_progress"]')
    port = web.url.rsplit(":", 1)[1]
    web.kill()
    page.wait_for_selector("#banner:not([hidden])", timeout=WAIT_MS)
    assert OFFLINE.match(banner(page)), banner(page)
    nodes.job(v, {"intake": "done", "laser": "running"})
    again = WebServer(tmp_path / "again", web.broker).start(f"127.0.0.1:{port}")
    try:
        page.wait_for_selector('.step[data-step="laser"][data-status="running"]', timeout=WAIT_MS)
        assert banner(page) == ""
    finally:
        again.kill()


def test_a_refused_qr_says_why_in_the_browser(web: WebServer, browser: Pages):
    from edge.public import order_url

    v = Visitor.make("R1", "Camille")
    page = browser.new_page(viewport={"width": 390, "height": 844})
    tampered = v.payload[:-3] + ("A" if v.payload[-3] != "A" else "B") + v.payload[-2:]
    response = page.goto(web.url + order_url("", tampered))
    assert response.status == 400
    assert "cannot open a stand" in page.locator("h1").inner_text()
    assert "signature" in page.locator(".reason").inner_text()


def test_no_asset_leaves_the_trailer(web: WebServer, nodes: Nodes, browser: Pages):
    """Every request a page makes stays on the server it came from (no CDN, no web font)."""
    v = Visitor.make("N1", "Ann")
    nodes.job(v, {"intake": "done"})
    nodes.snapshot(v, jpeg())
    page = browser.new_page()
    for path in ("/", "/screen", f"/job/{v.pid}", v.url_path):
        page.goto(web.url + path)
        page.wait_for_timeout(300)  # the stream opens, the pictures load (never "networkidle": SSE stays open)
    requested = browser.requested
    assert len(requested) > 8 and all(url.startswith(web.url + "/") for url in requested), \
        [u for u in requested if not u.startswith(web.url)]
