"""The web page in headless Chromium: pick a video, ask, see the windows, click one to seek."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_predict import World, grounding_world, query_text

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    from ground.predict import Grounder
    from ground.serve.app import create_app

    torch.set_num_threads(1)
    world: World = grounding_world(tmp_path_factory)
    app = create_app(Grounder.from_checkpoint(world.ckpt, cache=world.cache), world.root)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_pick_ask_draw_and_seek(server: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, '#video-list button[data-id="amber"]'))).click()
    player = browser.find_element(By.ID, "player")
    # The player loads the cached video's source through /media (metadata needed to seek).
    wait.until(lambda d: d.execute_script("return arguments[0].readyState", player) >= 1)
    assert browser.execute_script("return arguments[0].duration", player) == pytest.approx(8.0, abs=0.1)

    # The cached query texts are offered; clicking one fills the box.
    suggestion = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#suggestions button")))
    assert suggestion.text == query_text("red")
    suggestion.click()
    box = browser.find_element(By.ID, "queries")
    box.send_keys("\n" + "a purple triangle spins")
    browser.find_element(By.ID, "submit").click()

    tracks = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .track") or False)
    assert len(tracks) == 2
    assert tracks[0].find_element(By.CSS_SELECTOR, ".query").text == query_text("red")
    windows = tracks[0].find_elements(By.CSS_SELECTOR, ".bar .window")
    assert 1 <= len(windows) <= 5
    # Ground truth of the cached query is drawn; the new sentence has none.
    assert len(tracks[0].find_elements(By.CSS_SELECTOR, ".bar .gt")) == 1
    assert not tracks[1].find_elements(By.CSS_SELECTOR, ".bar .gt")
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")

    # Park the player far from the best window, click the window, and the player jumps to its start.
    target = windows[-1]  # drawn worst first: the last element is the top-ranked window
    assert target.get_attribute("class").split() == ["window", "rank-1"]
    start = float(target.get_attribute("data-start"))
    parked = 7.5 if start < 4 else 0.0
    browser.execute_script("arguments[0].pause(); arguments[0].currentTime = arguments[1];", player, parked)
    wait.until(lambda d: abs(d.execute_script("return arguments[0].currentTime", player) - parked) < 0.01)
    browser.execute_script("arguments[0].click()", target)  # windows may overlap: click this one
    wait.until(lambda d: abs(d.execute_script("return arguments[0].currentTime", player) - start) < 0.5)
