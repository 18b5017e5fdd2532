"""The console (services/console) against the real mesh: its own process, started against the
session's stack, driven by Debian's Chromium through playwright (make test installs chromium).

Screenshots go to $RECMESH_CONSOLE_SCREENSHOTS when set (the README's are made with
RECMESH_CONSOLE_SCREENSHOTS=docs/img), else to the test's temporary folder: a test run does not
write into the source tree."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from recmesh.client import Event
from recmesh.common.auth import make_key
from recmesh.common.local import REPO, die_with_parent, free_port
from recmesh.v1 import updater_pb2, updater_pb2_grpc

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Star Wars IV, V, VI and Alien: a user deep in science fiction.
SCI_FI = ["260", "1196", "1210", "1214"]
QUERY = "romantic comedy in new york"
ADMIN_TOKEN, ADMIN_LINE = make_key(["admin", "recommend"], "ops")
OTHER_TOKEN, OTHER_LINE = make_key(["recommend"], "web")


def _get(url: str, token: str | None = ADMIN_TOKEN, timeout: float = 10.0) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture(scope="module")
def console(stack, tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("console") / "console.log").open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "RECMESH_CONSOLE_PORT": str(port),
           "RECMESH_CONSOLE_GATEWAY_ADDR": stack.address("gateway"),
           "RECMESH_CONSOLE_GATEWAY_METRICS_URL": f"http://127.0.0.1:{stack.metrics_ports['gateway']}/metrics",
           "RECMESH_CONSOLE_RANKER_METRICS_URL": f"http://127.0.0.1:{stack.metrics_ports['ranker']}/metrics",
           "RECMESH_CONSOLE_SCRAPE_INTERVAL_S": "0.5", "RECMESH_CONSOLE_LIVE_WINDOW_S": "30",
           "RECMESH_CONSOLE_API_KEYS": f"{ADMIN_LINE};{OTHER_LINE}"}
    proc = subprocess.Popen([*die_with_parent(), sys.executable, "-m", "services.console"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if _get(f"{url}/readyz", token=None, timeout=2)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "console not ready in 30 s"
        time.sleep(0.2)
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RECMESH_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def _ids(page, list_id: str) -> list[str]:
    return page.locator(f"#{list_id} li[data-item-id]").evaluate_all("els => els.map(e => e.dataset.itemId)")


def test_a_user_page_shows_recommendations_and_a_typed_query_changes_them(console, client, user, browser, shots):
    url, _ = console
    now = int(time.time() * 1000)
    client.track_events([Event(user, item, "click", timestamp_ms=now - 1000 * (len(SCI_FI) - i))
                         for i, item in enumerate(SCI_FI)])
    context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN_TOKEN},
                                  viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{url}/users/{user}")
    page.wait_for_selector("#recommendations li[data-item-id]")
    assert page.locator("#profile").inner_text().startswith(f"{len(SCI_FI)}")
    # Events in time order, newest first: the last one tracked on top.
    rows = page.locator("#events a.id").all_inner_texts()
    assert rows == SCI_FI[::-1]
    before = _ids(page, "recommendations")
    assert len(before) == 10 and not set(before) & set(SCI_FI)  # seen items are left out
    assert page.locator("#recommendations .reasons").count() >= 1
    assert "ms" in page.locator(".stages").first.inner_text()
    assert "ranker" in page.locator(".versions").first.inner_text()
    page.screenshot(path=str(shots / "console-user.png"), full_page=True)

    page.fill("#query", QUERY)
    page.click("#query-form button[type=submit]")
    page.wait_for_selector("#with-query li[data-item-id]")
    assert page.locator("#query").input_value() == QUERY
    assert _ids(page, "recommendations") == before  # the list without the query, beside it
    after = _ids(page, "with-query")
    entering = set(after) - set(before)
    assert len(after) == 10 and entering, "the typed query changed nothing"
    assert page.locator("#with-query .badge.enters").count() == len(entering)
    assert page.locator("#recommendations .badge.leaves").count() == len(set(before) - set(after))
    assert f"brings in {len(entering)} items" in page.locator("#changes").inner_text()
    page.screenshot(path=str(shots / "console-query.png"), full_page=True)

    page.goto(f"{url}/items/260")
    page.wait_for_selector("#similar li[data-item-id]")
    similar = _ids(page, "similar")
    assert similar and "260" not in similar
    page.screenshot(path=str(shots / "console-item.png"), full_page=True)

    page.goto(f"{url}/")  # the live numbers from the calls above, and the plot drawn on the server
    page.wait_for_selector("#live")
    assert page.locator("img[src='/live.png']").evaluate("img => img.complete && img.naturalWidth") > 0
    assert page.locator("#rankers").inner_text()
    page.screenshot(path=str(shots / "console-overview.png"), full_page=True)
    context.close()


def test_the_console_asks_for_an_admin_token(console):
    url, _ = console
    status, _, headers = _get(f"{url}/users/1", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert _get(f"{url}/users/1", token="rmk_not-a-key")[0] == 401
    status, body, _ = _get(f"{url}/users/1", token=OTHER_TOKEN)
    assert status == 403 and b"admin" in body
    basic = base64.b64encode(f"anyone:{ADMIN_TOKEN}".encode()).decode()
    request = urllib.request.Request(f"{url}/api/users/1", headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["profile"]["user_id"] == "1"
    assert _get(f"{url}/healthz", token=None)[0] == 200  # probes stay open


def test_bad_input_names_the_field_and_gateway_errors_are_shown(console):
    url, _ = console
    status, body, _ = _get(f"{url}/api/users/1?k=abc")
    assert status == 400 and json.loads(body)["error"]["field"] == "k"
    status, body, _ = _get(f"{url}/api/users/1?k=0")
    assert status == 400 and json.loads(body)["error"]["message"] == "k: must be in 1..100, got 0"
    status, body, _ = _get(f"{url}/api/search?text=%E2%80%8B")  # only a zero-width space: no text
    assert status == 400 and json.loads(body)["error"]["field"] == "text"
    status, body, _ = _get(f"{url}/users/1?k=abc")  # the page says it too
    assert status == 400 and b"k: must be a whole number" in body
    # The gateway's own refusal, passed on with its code and details (an item it does not know).
    status, body, _ = _get(f"{url}/api/items/no-such-item-42")
    error = json.loads(body)["error"]
    assert status == 404 and error["code"] == "NOT_FOUND" and error["gateway"] == "SimilarItems"
    assert "item_id" in error["message"]


def test_search_live_numbers_and_versions(console, client):
    url, _ = console
    status, body, _ = _get(f"{url}/api/search?text=space%20opera&k=5")
    found = json.loads(body)["found"]
    assert status == 200 and len(found["items"]) == 5 and found["versions"]
    for _ in range(20):
        client.recommend("1", k=5)
    deadline = time.monotonic() + 10
    while True:
        live = json.loads(_get(f"{url}/api/live")[1])
        window = live["window"]
        if window and window["calls"] >= 20:
            break
        assert time.monotonic() < deadline, live
        time.sleep(0.5)
    assert window["throughput"] > 0 and 0 < window["p99_ms"] < 5000 and 0 <= window["degraded_share"] <= 1
    (ranker,) = live["rankers"]
    assert ranker["version"] and ranker["replicas"] == 1 and "served since" in ranker["freshness"]
    status, png, headers = _get(f"{url}/live.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    status, page, _ = _get(f"{url}/")
    assert status == 200 and b"answers/s" in page and ranker["version"].encode() in page


def test_looking_at_a_user_does_not_change_their_recommendations(console, client, stack, user):
    """The console's Recommends are previews: no impression, so nothing it showed counts as
    "shown and not chosen" in the user's next answer - unlike a Recommend the user was shown."""
    url, _ = console
    client.track_events([Event(user, item, "click") for item in SCI_FI])
    with grpc.insecure_channel(stack.address("updater")) as channel:
        updater = updater_pb2_grpc.UpdaterStub(channel)

        def skipped() -> dict[str, int]:
            time.sleep(0.6)  # past the gateway's impression batch window (250 ms)
            return dict(updater.GetUserState(updater_pb2.GetUserStateRequest(user_id=user), timeout=5).skipped)

        first = json.loads(_get(f"{url}/api/users/{user}?query=space")[1])
        again = json.loads(_get(f"{url}/api/users/{user}?query=space")[1])
        assert skipped() == {}
        assert [i["item_id"] for i in again["recommendations"]["items"]] == \
            [i["item_id"] for i in first["recommendations"]["items"]]
        shown = client.recommend(user, k=5)  # what the user is shown is logged, and counts
        assert set(skipped()) == {i.item_id for i in shown.items}


def test_sigterm_drains_and_stops(console):
    url, proc = console
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
