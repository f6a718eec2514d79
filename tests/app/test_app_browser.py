"""End to end in headless Chromium: the real app server, an upload, the three slices, harmonization, the download.

Needs Debian's chromium + chromedriver (``make test`` installs them); screenshots of every page are saved under
``$NEUROATTN_TEST_ARTIFACTS`` (default ``test-artifacts/browser``). Set ``NEUROATTN_REQUIRE_BROWSER=1`` to fail
instead of skipping when no browser is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_test_support import APP_DIR, AppWorkspace

from neuroattn.web.launch import streamlit_command
from neuroattn.web.settings import load_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("NEUROATTN_TEST_ARTIFACTS", APP_DIR.parent / "test-artifacts" / "browser"))

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("NEUROATTN_REQUIRE_BROWSER") == "1":
        raise RuntimeError("chromium and chromedriver are required (NEUROATTN_REQUIRE_BROWSER=1): install Debian's "
                           "chromium and chromium-driver packages")
    pytest.skip("headless Chromium not installed (Debian packages chromium, chromium-driver)", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(app_workspace: AppWorkspace) -> Iterator[str]:
    port = _free_port()
    settings = load_settings(app_workspace.root, data_roots=[], max_upload_mb=50)
    env = dict(os.environ, **settings.env())
    cmd = streamlit_command(settings, port)  # exactly what `neuroattn app` runs
    log = ARTIFACTS / "server.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app server did not start; see {log}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: object, seconds: float = 90) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.5)


def _open(driver: object, url: str) -> None:
    driver.get(url)
    _wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "h1")))


def _upload(driver: object, path: Path, index: int = 0) -> None:
    inputs = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
    inputs[index].send_keys(str(path))


def _images(driver: object) -> list[object]:
    return [img for img in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, "
                                                "[data-testid='stImageContainer'] img")
            if img.get_attribute("naturalWidth") not in (None, "0")]


def _shot(driver: object, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_browser_upload_view_harmonize_download(server: str, browser: object, app_workspace: AppWorkspace) -> None:
    driver = browser
    _open(driver, server)
    _wait(driver).until(lambda d: "neuroattn" in d.find_element(By.CSS_SELECTOR, "h1").text)
    _wait(driver).until(lambda d: "Attention kernels" in d.page_source)
    assert _shot(driver, "01-home").stat().st_size > 0

    scan = app_workspace.scan()
    _open(driver, f"{server}/viewer")
    _upload(driver, scan)
    _wait(driver).until(lambda d: len(_images(d)) >= 3)
    captions = driver.page_source
    assert all(view in captions for view in ("sagittal", "coronal", "axial"))
    assert _shot(driver, "02-viewer").stat().st_size > 0

    _open(driver, f"{server}/harmonize")
    _wait(driver).until(lambda d: "tiny-sa" in d.page_source)  # the newest checkpoint is preselected
    _upload(driver, scan)
    button = _wait(driver).until(ec.element_to_be_clickable(
        (By.XPATH, "//button[.//p[normalize-space()='Harmonize'] or normalize-space()='Harmonize']")))
    button.click()
    expected = scan.name.replace(".nii.gz", "_harmonized.nii.gz")
    download = _wait(driver, 180).until(lambda d: [b for b in d.find_elements(
        By.CSS_SELECTOR, "[data-testid='stDownloadButton'] button") if expected in b.text])
    assert download and len(_images(driver)) >= 9  # before, after, difference
    assert _shot(driver, "03-harmonize").stat().st_size > 0
    assert list((app_workspace.root / "outputs" / "harmonize").rglob(expected))

    for page in ("cohort", "report"):
        _open(driver, f"{server}/{page}")
        time.sleep(1.0)
        assert "Traceback" not in driver.page_source
        assert _shot(driver, f"04-{page}").stat().st_size > 0
