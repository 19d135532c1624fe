"""Real-browser test: the app in Debian's chromium, driven by Playwright, from launch to heatmap.

Starts `streamlit run app.py` on a free port against a tiny phantom, launches a tiny weak-vs-strong
study from the Train page, waits for it on the Runs page, then checks that the learning curve
(Results), the slice-score strip and a heatmap (Inspect) appear. Screenshots of every page are saved
to the test's temporary folder (printed on failure); the README's come from tests/readme_screenshots.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_dataset):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    import torch

    from ich.models import build_encoder, save_encoder

    root = tmp_path_factory.mktemp("browser") / "data"
    shutil.copytree(tiny_dataset, root / "datasets" / "tiny")
    torch.manual_seed(0)
    save_encoder(root / "encoders" / "tiny-compact.pt", build_encoder("compact", in_channels=1, embed_dim=32, width=16),
                 {"windows": ["brain"], "input_size": 64})
    try:
        with serve_app(root, root.parent / "streamlit.log") as url:
            yield url, root
        print(f"browser-test screenshots: {root.parent / 'screenshots'}")
    finally:
        from ich import jobs

        for job in jobs.list_jobs(root / "jobs.sqlite"):
            if job.state in ("queued", "running"):
                jobs.cancel(root / "jobs.sqlite", job.id)


@contextlib.contextmanager
def serve_app(data: Path, log_path: Path):
    """Run `streamlit run app.py` on a free 127.0.0.1 port with ICH_DATA=data; yields its URL once healthy."""
    port = free_port()
    env = dict(os.environ, ICH_DATA=str(data), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("streamlit did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def shot(page, folder: Path, name: str) -> None:
    """Save a full-page screenshot as ``folder/<name>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def wait_idle(page) -> None:
    """Wait until Streamlit has finished running the script (no 'Running...' status)."""
    page.wait_for_timeout(500)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=60_000)


def test_launch_a_study_and_inspect_it(app_url, page):
    from ich import jobs

    app_url, root = app_url
    shots = root.parent / "screenshots"
    page.goto(app_url)
    page.get_by_text("Run the quick study").wait_for()
    page.get_by_text("Positive exams").wait_for()
    shot(page, shots, "home")

    page.goto(f"{app_url}/Data")
    page.get_by_text("Slice viewer").wait_for()
    wait_idle(page)
    shot(page, shots, "data")

    page.goto(f"{app_url}/Train")
    page.get_by_text("study grid (budgets x seeds)").click()
    wait_idle(page)
    budgets = page.get_by_label("Budgets (comma-separated)")
    budgets.fill("4,8")
    budgets.press("Enter")
    wait_idle(page)
    seeds = page.get_by_role("spinbutton", name="Seeds")
    seeds.fill("1")
    seeds.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("Follow it on the").wait_for()
    shot(page, shots, "train")

    page.goto(f"{app_url}/Runs")
    page.get_by_text("One job").wait_for()
    deadline = time.time() + 300
    while (job := jobs.list_jobs(root / "jobs.sqlite")[0]).state not in jobs.FINAL_STATES:
        assert time.time() < deadline, f"the study did not finish in 300 s: {job}"
        page.wait_for_timeout(2000)
    assert job.state == "done", f"the study ended {job.state}: {job.error}"
    page.wait_for_timeout(3000)                                   # one more poll of the live table
    shot(page, shots, "runs")

    page.goto(f"{app_url}/Results")
    page.get_by_text("Plan the cheapest labelling").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() >= 2          # learning curves (and the ROC)
    wait_idle(page)
    shot(page, shots, "results")

    page.goto(f"{app_url}/Inspect")
    page.get_by_text("heatmap (truth outlined in green)").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()            # the slice-score strip
    page.locator("[data-testid='stImage'] img").nth(2).wait_for()  # slice, heatmap and truth images (rendered last)
    wait_idle(page)
    assert page.locator("[data-testid='stImage'] img").count() >= 3
    shot(page, shots, "inspect")
