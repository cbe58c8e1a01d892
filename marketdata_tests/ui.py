"""The UI as a person meets it: the Dagster webserver on loopback, and headless Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@contextlib.contextmanager
def webserver(env: dict[str, str]):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", "marketdata_assets.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "webserver did not come up"
            try:
                if httpx.get(url + "/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        no_community_dialog(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def browser():
    """Headless Chromium through Selenium (Debian's chromium and chromium-driver; CI installs them)."""
    if not Path(CHROMEDRIVER).exists():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{CHROMEDRIVER} is missing: .ci/run installs chromium and chromium-driver")
        pytest.skip("no chromium here: apt-get install chromium chromium-driver")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver, url: str, wanted: list[str], timeout_s: float = 60) -> str:
    """The rendered text of `url` once it shows everything `wanted`."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while True:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(piece in text for piece in wanted):
            return text
        if time.monotonic() > deadline:
            missing = [piece for piece in wanted if piece not in text]
            raise AssertionError(f"{url} never showed {missing!r}; it shows:\n{text[:3000]}")
        time.sleep(0.5)


def no_community_dialog(url: str) -> None:
    """Mark Dagster's one-time "Join the Dagster community" dialog seen (as its Skip button does),
    so it does not cover the pages a test reads and photographs."""
    assert graphql(url, "mutation { setNuxSeen }")["setNuxSeen"]


def graphql(url: str, query: str, **variables) -> dict:
    response = httpx.post(url + "/graphql", json={"query": query, "variables": variables}, timeout=30)
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]
