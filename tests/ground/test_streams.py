"""`/streams`: a real server on 127.0.0.1, read by a real HTTP client (SSE), with the oracle network."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from test_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401 (fixture)
from test_watch import EVENTS_SEC, oracle, stream_file, world  # noqa: F401 (fixtures)

from ground.predict import Grounder
from ground.serve.app import create_app

QUERY = "a red square appears"


@pytest.fixture(scope="module")
def server(oracle: Grounder, stream_file: Path, world) -> Iterator[str]:  # noqa: F811
    app = create_app(oracle, world.root, allowed_sources=[str(stream_file)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


def _read_sse(url: str) -> list[dict]:
    events = []
    with httpx.stream("GET", url, timeout=httpx.Timeout(10.0, read=600.0)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


def test_a_stream_reports_the_known_windows_over_sse(server: str, stream_file: Path) -> None:  # noqa: F811
    listed = httpx.get(f"{server}/streams").json()
    assert listed["allowed_sources"] == [str(stream_file)]
    body = {"source": str(stream_file), "queries": [QUERY], "window_sec": 4.0, "hop_sec": 1.0, "speed": 0}
    created = httpx.post(f"{server}/streams", json=body)
    assert created.status_code == 201, created.text
    stream_id = created.json()["id"]
    events = _read_sse(f"{server}/streams/{stream_id}/events")
    ended = [(e["start_sec"], e["end_sec"]) for e in events if e["query"] == QUERY and e["state"] == "ended"]
    assert ended == EVENTS_SEC
    assert events[-1]["state"] == "stopped" and events[-1]["windows"] == 16
    # Reading again from an event id gives the rest only.
    with httpx.stream(
        "GET", f"{server}/streams/{stream_id}/events", headers={"Last-Event-ID": "3"}
    ) as response:
        first = next(line for line in response.iter_lines() if line.startswith("id: "))
    assert first == "id: 4"
    assert httpx.delete(f"{server}/streams/{stream_id}").json()["finished"] is True
    assert httpx.get(f"{server}/streams/{stream_id}/events").status_code == 404


def test_queries_change_while_the_stream_runs(server: str, stream_file: Path) -> None:  # noqa: F811
    body = {"source": str(stream_file), "queries": [QUERY], "speed": 1.0}
    stream_id = httpx.post(f"{server}/streams", json=body).json()["id"]
    added = httpx.post(f"{server}/streams/{stream_id}/queries", json={"queries": ["a blue square appears"]})
    assert added.status_code == 200, added.text
    assert added.json()["queries"] == [QUERY, "a blue square appears"]
    removed = httpx.delete(f"{server}/streams/{stream_id}/queries", params={"query": QUERY})
    assert removed.status_code == 200, removed.text
    assert removed.json()["queries"] == ["a blue square appears"]
    missing = httpx.delete(f"{server}/streams/{stream_id}/queries", params={"query": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    closed = httpx.delete(f"{server}/streams/{stream_id}")
    assert closed.status_code == 200
    assert stream_id not in [s["id"] for s in httpx.get(f"{server}/streams").json()["streams"]]


def test_only_allow_listed_sources(server: str, stream_file: Path) -> None:  # noqa: F811
    for source in ["/etc/passwd", "udp://127.0.0.1:9", str(stream_file) + "x"]:
        response = httpx.post(f"{server}/streams", json={"source": source, "queries": [QUERY]})
        assert response.status_code == 403 and "allow-list" in response.json()["error"]
    strict = httpx.post(
        f"{server}/streams", json={"source": str(stream_file), "queries": [QUERY], "speed": "0"}
    )
    assert strict.status_code == 422
    assert httpx.get(f"{server}/streams/nosuch/events").status_code == 404


@pytest.mark.browser
@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver)",
)
def test_the_live_view_lights_one_lane_per_query(server: str, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 300)
    browser.get(server + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#live-source option"))
    browser.find_element(By.ID, "live-queries").send_keys(f"{QUERY}\na blue square appears")
    speed = browser.find_element(By.ID, "live-speed")
    speed.clear()
    speed.send_keys("0")
    browser.find_element(By.ID, "live-start").click()
    wait.until(lambda d: d.find_element(By.ID, "live-status").text.startswith("stopped"))
    lanes = browser.find_elements(By.CSS_SELECTOR, "#live-lanes .lane")
    assert [lane.get_attribute("data-query") for lane in lanes] == [QUERY, "a blue square appears"]
    boxes = lanes[0].find_elements(By.CSS_SELECTOR, ".occurrence")
    drawn = [(float(b.get_attribute("data-start")), float(b.get_attribute("data-end"))) for b in boxes]
    assert drawn == EVENTS_SEC
    # The oracle sees red whatever the sentence: the second lane shows the same occurrences.
    assert len(lanes[1].find_elements(By.CSS_SELECTOR, ".occurrence")) == 2
    assert "lit" not in lanes[0].get_attribute("class")  # all ended
    assert "error" not in browser.find_element(By.ID, "live-status").get_attribute("class")
