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


def launch_study_from_train(page, app_url: str, *, budgets: str, seeds: int) -> None:
    """On the Train page, as a user: a weak-vs-strong study grid with these budgets and seeds, launched."""
    page.goto(f"{app_url}/Train")
    page.get_by_text("study grid (budgets x seeds)").click()
    wait_idle(page)
    field = page.get_by_label("Budgets (comma-separated)")
    field.fill(budgets)
    field.press("Enter")
    wait_idle(page)
    box = page.get_by_role("spinbutton", name="Seeds")
    box.fill(str(seeds))
    box.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("Follow it on the").wait_for()


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

    launch_study_from_train(page, app_url, budgets="4,8", seeds=1)
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


def selectbox_text(page, label: str) -> str:
    """What a selectbox shows: its text and the value of its search input."""
    box = page.locator("[data-testid='stSelectbox']").filter(has=page.get_by_text(label, exact=True)).first
    return box.inner_text() + " " + " ".join(box.locator("input").evaluate_all("els => els.map(e => e.value)"))


def slider_value(page) -> int:
    return int(page.locator("[data-testid='stSliderThumbValue']").first.inner_text())


def test_own_series_uploads_ood_and_strip_click(app_url, page, tiny_phantom_run, tmp_path):
    """Two uploads in a row in one tab (a body CT zip, then one loose .dcm), an OOD flag, a strip click."""
    from _series import ct_small_series, zip_folder

    app_url, root = app_url
    shots = root.parent / "screenshots"
    shutil.copytree(tiny_phantom_run, root / "runs" / "weak-tiny")
    body_zip = tmp_path / "body.zip"
    body_zip.write_bytes(zip_folder(ct_small_series(tmp_path / "body", n=24)))
    one = ct_small_series(tmp_path / "one", n=1) / "slice000.dcm"

    timings = {}
    t0 = time.time()
    page.goto(f"{app_url}/Inspect")
    page.get_by_text("Exam (highest score first)").wait_for()
    page.locator(".js-plotly-plot").first.wait_for(state="attached")
    wait_idle(page)
    timings["inspect first load"] = time.time() - t0

    def upload(files, expect: str) -> None:
        button = page.get_by_role("button", name="Import and score")
        if not button.is_visible():
            page.get_by_text("Score your own series").click()
        button.wait_for(state="visible")
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(files)
        page.get_by_text(Path(files).name).first.wait_for()         # uploaded to the server, as a user sees it
        button.click()
        try:
            page.get_by_text(expect).first.wait_for(timeout=120_000)    # only this upload shows it
        except Exception:
            shot(page, shots, "upload-failed")                           # what the page showed instead
            raise
        wait_idle(page)

    t0 = time.time()
    upload(str(body_zip), "does not look like a head")
    page.get_by_text("Out of distribution: do not trust this score").wait_for()
    timings["upload 24-slice zip to OOD verdict"] = time.time() - t0
    page.get_by_text("not reliable: out of distribution").wait_for()
    page.get_by_text("No ground truth for this series").wait_for()
    shot(page, shots, "inspect-upload-body-ct")

    t0 = time.time()
    upload(str(one), "This series has one slice.")      # the second upload in the same tab, a one-slice series
    timings["second upload (one slice)"] = time.time() - t0
    page.get_by_text("only 1 slice").first.wait_for()
    assert page.get_by_text("KeyError").count() == 0 and page.get_by_text("IndexError").count() == 0
    assert len(list((root / "uploads").glob("upload-*/dataset"))) == 2
    assert list((root / "uploads").glob("*/files")) == []          # raw DICOM deleted after import
    shot(page, shots, "inspect-upload-one-slice")

    page.get_by_label("Exams").click()                           # back to the body CT: a strip with 24 slices
    page.get_by_role("option", name="24 slices").first.click()
    wait_idle(page)
    before = slider_value(page)
    target = 3 if before != 3 else 5
    t0 = time.time()
    dot = page.locator(".js-plotly-plot").first.locator(".scatterlayer .trace").nth(3).locator(".point").nth(target)
    dot.scroll_into_view_if_needed()
    box = dot.bounding_box()                             # plotly's drag layer sits above the points: click there
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    deadline = time.time() + 30
    while slider_value(page) != target:
        assert time.time() < deadline, f"clicking slice {target} in the strip left the slider at {slider_value(page)}"
        page.wait_for_timeout(300)
    wait_idle(page)
    timings["strip click to new slice"] = time.time() - t0
    page.get_by_text(f"slice {target} · HU under the cursor").wait_for()
    shot(page, shots, "inspect-strip-click")
    print("page latencies (s):", {k: round(v, 1) for k, v in timings.items()})


def test_cancel_reaches_every_place_and_the_log_and_time_left_update(app_url, page, tmp_path):
    """Launch a longer study, watch its time left and log move on the Runs page, cancel it there, then every
    place says cancelled: the jobs table, the job selector, Results (no live bar) and the HTML report."""
    from ich import jobs

    app_url, root = app_url
    shots = root.parent / "screenshots"
    launch_study_from_train(page, app_url, budgets="4,6,8", seeds=8)
    job = jobs.list_jobs(root / "jobs.sqlite")[0]

    page.goto(f"{app_url}/Runs")
    page.get_by_text("One job").wait_for()
    log = page.locator("[data-testid='stCode']").last
    seen_logs, deadline = set(), time.time() + 240
    while not page.get_by_text(" left · ").count():             # "Running · about 20 s left · 3/48 cells"
        assert time.time() < deadline, f"no time left shown in 240 s: {jobs.get(root / 'jobs.sqlite', job.id)}"
        seen_logs.add(log.inner_text())
        page.wait_for_timeout(1000)
    seen_logs.add(log.inner_text())
    assert len(seen_logs) >= 2, "the log panel never changed while the study ran"
    shot(page, shots, "runs-live")

    page.get_by_role("button", name="Cancel").click()
    deadline = time.time() + 60
    while jobs.get(root / "jobs.sqlite", job.id).state != "cancelled":
        assert time.time() < deadline, "the cancel did not reach the job"
        page.wait_for_timeout(500)
    assert "running" not in selectbox_text(page, "Job")              # the job selector never shows a stale state
    page.get_by_text("Cancelled", exact=True).wait_for()                  # the live panel
    shot(page, shots, "runs-cancelled")

    page.goto(f"{app_url}/Results")
    page.get_by_text("Cancelled:").first.wait_for()
    wait_idle(page)
    assert page.get_by_text("refreshing").count() == 0
    assert page.locator("[data-testid='stProgress']").count() == 0        # no live bar for an ended study
    shot(page, shots, "results-cancelled")
    with page.expect_download() as download:
        page.get_by_text("Download the HTML report").click()
    report = Path(download.value.path()).read_text()
    assert "Cancelled:" in report and "refreshing" not in report
