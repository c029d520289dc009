"""Headless Debian Chromium driven by Selenium, for the console's browser tests.

Uses the system's /usr/bin/chromium and /usr/bin/chromedriver (installed with apt-get when
missing and we are root); never downloads a browser. `Browser` wraps one WebDriver session
with the helpers the tests need: open a console view, wait for it to settle, collect the
browser console's messages, save screenshots under tests/console/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
WIDTH, HEIGHT = 1366, 900


def ensure_chromium() -> str | None:
    """None when Chromium and its driver are here (installing them if we can), else why not."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return "no /usr/bin/chromium and no apt-get to install it"
    if os.geteuid() != 0:
        return "no /usr/bin/chromium, and installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:  # the package lists may be missing: update once, then retry
        subprocess.run([apt, "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return f"apt-get could not install chromium: {result.stderr.strip()[-500:]}"
    return None


class Browser:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.profile = tempfile.mkdtemp(prefix="auditmesh-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={self.profile}", f"--window-size={WIDTH},{HEIGHT}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_script_timeout(30)
        self.logs: list[dict[str, Any]] = []

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- navigation ------------------------------------------------------------------

    def open(self, hash_route: str = "", *, base_url: str | None = None) -> None:
        """Load the console at `#/route`; the page is reloaded so each view starts fresh."""
        url = f"{base_url or self.base_url}/{hash_route}"
        self.driver.get("about:blank")
        self.driver.get(url)
        self.wait_settled()

    def wait_settled(self, timeout: float = 20) -> str:
        """Wait until <body data-state> leaves "loading"; returns the state."""
        try:
            WebDriverWait(self.driver, timeout).until(
                lambda d: d.execute_script("return document.body.dataset.state") != "loading"
            )
        except TimeoutException:
            self.screenshot("timeout")
            raise
        return str(self.driver.execute_script("return document.body.dataset.state"))

    def wait_for(self, css: str, timeout: float = 20) -> WebElement:
        try:
            element: WebElement = WebDriverWait(self.driver, timeout).until(
                lambda d: d.find_element(By.CSS_SELECTOR, css)
            )
        except TimeoutException:
            self.screenshot("timeout")
            raise
        return element

    def wait_until(self, script: str, timeout: float = 20) -> Any:
        """Wait until the JavaScript expression `script` is truthy; returns its value."""
        try:
            return WebDriverWait(self.driver, timeout).until(
                lambda d: d.execute_script(f"return ({script})")
            )
        except TimeoutException:
            self.screenshot("timeout")
            raise

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def login(self, token: str) -> None:
        self.open("#/login")
        field = self.wait_for("#token")
        field.clear()
        field.send_keys(token)
        self.find("#login button[type=submit]").click()
        self.wait_until("document.body.dataset.page === 'overview'")
        self.wait_settled()

    # -- evidence --------------------------------------------------------------------

    def console_messages(self) -> list[dict[str, Any]]:
        """Browser console entries since the last call (Selenium drains them)."""
        fresh: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        self.logs.extend(fresh)
        return fresh

    def errors(self) -> list[str]:
        self.console_messages()
        return [str(e["message"]) for e in self.logs if e.get("level") == "SEVERE"]

    def screenshot(self, name: str, *, full: bool = True) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        if full:  # grow the window to the page's height, so the whole view is in the picture
            height = int(self.js("return document.documentElement.scrollHeight"))
            self.driver.set_window_size(WIDTH, max(HEIGHT, min(height + 140, 4000)))
            time.sleep(0.2)
        self.driver.save_screenshot(str(path))
        if full:
            self.driver.set_window_size(WIDTH, HEIGHT)
        return path
