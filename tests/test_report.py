"""The HTML study report renders self-contained from a finished study; the plan and report verbs run."""

from __future__ import annotations

import json
from pathlib import Path
import re
from html.parser import HTMLParser

import pytest

from ich.planner import CostModel
from ich.report import build_report, write_report
from ich.study import make_study, run_study


@pytest.fixture(scope="module")
def study(tiny_dataset, tmp_path_factory):
    """The tiny study (8 cells) run in this process (the inline executor: no worker start-up)."""
    import torch

    from ich.models import build_encoder, save_encoder

    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    enc = save_encoder(root / "enc.pt", build_encoder("compact", in_channels=1, embed_dim=32, width=16),
                       {"windows": ["brain"], "input_size": 64})
    spec = make_study("tiny", dataset=str(tiny_dataset), init=str(enc), budgets=[4, 6, 8], seeds=[0, 1],
                      pixel_slices=2)
    run_study(spec, root / "s", executor="inline")
    return root / "s"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.slow
def test_report_is_self_contained(study):
    html = build_report(study, cost=CostModel(hourly_rate=123, currency="EUR"), targets=[0.6])
    parser = _Collect()
    parser.feed(html)
    assert not [s for s in parser.srcs if s.startswith(("http", "//"))], "the report loads something remotely"
    assert html.count("Plotly.newPlot") >= 4                       # curves vs labels/hours/cost + ROC or strips
    assert len(re.findall(r"<script[^>]*>", html)) >= 4
    assert "plotly.js v" in html or "plotly.js" in html            # the library is inlined
    assert "Every cell" in html and "weak-m8-s1" in html and "strong-m4-s0" in html
    import html as html_lib

    text = html_lib.unescape(html)
    assert '"hourly_rate": 123' in text and '"supervisions": [' in text   # the cost model and spec are printed
    assert "exam_auc 0.600" in html and "35×" in html


@pytest.mark.slow
def test_report_and_plan_verbs(study, tmp_path, capsys):
    from ich.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(study), "--out", str(out), "--target", "0.5", "--hourly-rate", "50"]) == 0
    assert out.is_file() and out.stat().st_size > 1_000_000        # plotly.js inlined (~4.6 MB)
    capsys.readouterr()
    rc = main(["plan", str(study), "--target", "0.01", "--json"])
    got = json.loads(capsys.readouterr().out)
    # the cheapest observed mean row that reaches the target (60 s per exam label, 5 s per slice label)
    import pandas as pd

    rows = pd.read_csv(study / "summary.csv").query("row == 'mean' and exam_auc >= 0.01")
    # a free validation split's exam labels are counted on top of the budget (the tiny preset validates free)
    free = rows.validation.astype(str).str.contains("free") * rows.val_labels.fillna(0)
    rows = rows.assign(hours=(rows.budget * rows.supervision.map({"weak": 60, "strong": 5}) + free * 60) / 3600)
    best = rows.sort_values(["hours", "exam_auc"], ascending=[True, False]).iloc[0]
    assert rc == 0 and (got["observed"]["supervision"], got["observed"]["budget"]) == (best.supervision, best.budget)
    assert got["observed"]["hours"] == pytest.approx(best.hours)


def test_write_report_refuses_a_non_study(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a study folder"):
        write_report(tmp_path)


def test_comparison_sentence_says_what_the_delong_test_says_without_raw_nan():
    from ich.results import comparison_sentence

    r = {"level": 0.95, "n_exams": 45, "n_positive": 15, "n_only_a": 0, "n_only_b": 2, "auc_a": 0.93, "auc_b": 0.88,
         "diff": 0.05, "diff_ci_low": 0.01, "diff_ci_high": 0.09, "p_value": 0.012, "alternative": "two-sided"}
    s = comparison_sentence(r)
    assert "45 exams both runs scored (15 with hemorrhage)" in s and "2 only B scored" in s
    assert "A − B = +0.050 (95% CI +0.010 to +0.090)" in s and "evidence that they differ" in s
    s = comparison_sentence({**r, "p_value": 0.4, "alternative": "greater"})
    assert "no evidence that A is better" in s
    s = comparison_sentence({**r, "p_value": float("nan"), "diff_ci_low": float("nan"), "auc_b": float("nan")})
    assert "nan" not in s.lower().replace("not estimable", "") and "not estimable" in s


@pytest.mark.slow
def test_the_results_page_the_report_and_plan_say_the_same(study, tmp_path, monkeypatch, capsys):
    """One study answer (``results.study_answer``), three renderings: the same plan, outcomes and ROC runs."""
    import html as html_lib
    import sys

    from streamlit.testing.v1 import AppTest

    from ich.cli import main
    from ich.results import study_answer

    target = 0.5                                   # the Results slider's lowest value
    answer = study_answer(study, targets=[target])
    at = answer.targets[0]
    assert at.outcomes
    sentence = at.plan.sentence() if at.plan else f"No arm of this study reached an exam AUC of {target:.2f}"

    report = html_lib.unescape(build_report(study, targets=[target]))
    assert (sentence.replace("**", "") if at.plan else "none reaches it") in report
    assert all(line.rstrip(".") in report for line in at.outcomes)       # joined with "; " there
    assert all(c["name"] in report for c in answer.roc)             # the ROC shows the same runs

    assert main(["plan", str(study), "--target", str(target)]) in (0, 1)
    printed = capsys.readouterr().out
    assert (sentence.replace("**", "") if at.plan else "no observed plan reaches") in printed
    assert all(line in printed for line in at.outcomes)

    root = tmp_path / "data"
    (root / "studies").mkdir(parents=True)
    (root / "studies" / study.name).symlink_to(study)
    monkeypatch.setenv("ICH_DATA", str(root))
    main_module = sys.modules["__main__"]
    try:
        page = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "4_Results.py"),
                                 default_timeout=120)
        page.session_state["results_target"] = target
        page.run()
    finally:
        sys.modules["__main__"] = main_module
    assert not page.exception, page.exception
    shown = [e.value for e in [*page.success, *page.warning]] + [m.value for m in page.markdown]
    assert any(v.startswith(sentence) for v in shown), shown
    assert all(f"- {line}" in shown for line in at.outcomes)
