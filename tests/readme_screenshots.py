"""README screenshots: the app in chromium on the default phantom and its quick study (`make screenshots`).

Not a test. Starts `streamlit run app.py` on a free port against ./data (or $ICH_DATA), which must
hold the default phantom and a finished quick study in data/studies/ (`make screenshots` makes
both when missing), and saves one full-page screenshot per page to tests/screenshots/.
The browser test saves its own screenshots of a toy study to its temporary folder instead.

    python tests/readme_screenshots.py [--run weak-m48-s0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import CHROMIUM, REPO, serve_app, wait_idle  # noqa: E402

sys.path.insert(0, str(REPO))                                      # `ich` when run as a script

SHOTS = REPO / "tests" / "screenshots"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="weak-m48-s0", help="the study run the Inspect page shows")
    parser.add_argument("--study", default="quick", help="the study the Results page shows")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from ich import paths
    from ich.study import is_study

    if not any(is_study(p) for p in paths.studies_dir().glob("*")):
        raise SystemExit(f"no study in {paths.studies_dir()}; run `python -m ich study --preset quick "
                         f"--out {paths.studies_dir() / 'quick'}` first (make screenshots does)")
    with tempfile.TemporaryDirectory() as tmp, serve_app(paths.data_root(), Path(tmp) / "streamlit.log") as url:
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.set_default_timeout(120_000)

            def shot(path: str, name: str, ready: str) -> None:
                page.goto(f"{url}/{path}")
                page.get_by_text(ready).first.wait_for()
                wait_idle(page)
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
                print("wrote", SHOTS / f"{name}.png")

            page.goto(url)
            page.get_by_text("Positive exams").first.wait_for()
            wait_idle(page)
            if (paths.datasets_dir() / "phantom").is_dir():         # the default phantom, not the first by name
                page.locator("[data-testid='stSelectbox']").first.click()
                page.get_by_role("option", name="phantom", exact=True).click()
                wait_idle(page)
            page.screenshot(path=str(SHOTS / "home.png"), full_page=True)
            print("wrote", SHOTS / "home.png")
            shot("Data", "data", "Slice viewer")
            shot("Train", "train", "Launch")
            shot("Runs", "runs", "Training, studies, phantom generation")
            page.goto(f"{url}/Results")
            page.get_by_text("Study").first.wait_for()
            wait_idle(page)
            if (paths.studies_dir() / args.study).is_dir():         # the quick study, not the newest by name
                page.locator("[data-testid='stSelectbox']").first.click()
                page.keyboard.type(args.study)
                page.keyboard.press("Enter")
            page.get_by_text("Plan the cheapest labelling").first.wait_for()
            wait_idle(page)
            page.locator(".js-plotly-plot").nth(2).wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SHOTS / "results.png"), full_page=True)
            print("wrote", SHOTS / "results.png")
            page.goto(f"{url}/Inspect")
            page.get_by_text("heatmap (truth outlined in green)").wait_for()
            wait_idle(page)
            picker = page.locator("[data-testid='stSelectbox']").first
            picker.click()
            page.keyboard.type(args.run)
            page.keyboard.press("Enter")
            wait_idle(page)
            page.locator("[data-testid='stImage'] img").nth(2).wait_for()
            wait_idle(page)
            page.screenshot(path=str(SHOTS / "inspect.png"), full_page=True)
            print("wrote", SHOTS / "inspect.png")
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
