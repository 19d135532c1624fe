"""AppTest smoke tests: every page renders on a tiny phantom dataset without an exception."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "pages").glob("*.py"))


@pytest.fixture(autouse=True)
def keep_main_module():
    """AppTest runs page scripts as ``__main__``; restore it, or later spawn-based process pools re-run a page."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture
def app_data(tmp_path, monkeypatch, tiny_dataset):
    """A data root holding one tiny dataset, used by the app through $ICH_DATA."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root / "datasets" / "tiny")
    monkeypatch.setenv("ICH_DATA", str(root))
    monkeypatch.chdir(REPO)
    return root


def run_page(path: Path, **state) -> AppTest:
    at = AppTest.from_file(str(path), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_home_renders_counts(app_data):
    at = run_page(REPO / "app.py")
    assert not at.exception
    assert [m.label for m in at.metric][:2] == ["Exams", "Slices"]
    assert any(b.label == "Run the quick study" for b in at.button)


def test_home_without_data_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ICH_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(REPO)
    at = run_page(REPO / "app.py")
    assert not at.exception
    assert "No dataset yet" in at.info[0].value


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_page_renders(app_data, page):
    at = run_page(page)
    assert not at.exception, at.exception


def test_data_page_has_the_viewer_widgets(app_data):
    at = run_page(REPO / "pages" / "1_Data.py")
    assert not at.exception
    assert at.slider(key="data_slice") is not None
    assert at.radio(key="data_window").options == ["brain", "subdural", "bone"]
    at.radio(key="data_window").set_value("bone").run()
    assert not at.exception


def test_data_page_queues_an_atlas_phantom(app_data, monkeypatch):
    from ich import jobs

    queued = []
    after = []
    monkeypatch.setattr(jobs, "submit", lambda db, argv, **kw: queued.append(argv) or after.append(kw.get("after"))
                        or SimpleNamespace(id=len(queued)))                   # nothing really starts
    at = run_page(REPO / "pages" / "1_Data.py")
    at.selectbox(key="data_anatomy").set_value("atlas")
    next(b for b in at.button if b.label == "Generate").click().run()
    assert not at.exception, at.exception
    assert queued[0][0] == "synth" and queued[0][-2:] == ["--anatomy", "atlas"]
    assert queued[1][:2] == ["import", "phantom"]
    assert after == [None, 1]                          # the import waits for the phantom, whatever the slots


@pytest.mark.parametrize("problem", ["missing folder", "name taken"])
def test_data_page_refuses_an_import_before_queueing_it(app_data, tmp_path, problem):
    from ich import jobs

    at = run_page(REPO / "pages" / "1_Data.py")
    src = tmp_path / ("nowhere" if problem == "missing folder" else "dicom")
    if problem == "name taken":
        src.mkdir()
    next(t for t in at.text_input if t.label.startswith("Source folder")).set_value(str(src))
    next(t for t in at.text_input if t.label == "Dataset name").set_value("tiny" if problem == "name taken" else "new")
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception
    expected = "does not exist on this machine" if problem == "missing folder" else "named 'tiny' already exists"
    assert any(expected in e.value for e in at.error), [e.value for e in at.error]
    db = app_data / "jobs.sqlite"
    assert not db.exists() or jobs.list_jobs(db) == []


def test_launching_a_run_creates_a_job(app_data):
    from ich import jobs

    at = run_page(REPO / "pages" / "2_Train.py")
    assert not at.exception
    at.radio(key="train_mode").set_value("single run").run()
    at.selectbox(key="train_init").set_value("random").run()
    at.number_input(key="train_budget").set_value(8)
    at.number_input(key="train_epochs").set_value(1)
    at.button(key="train_launch").click().run()
    assert not at.exception
    rows = jobs.list_jobs(app_data / "jobs.sqlite")
    assert len(rows) == 1 and rows[0].kind == "train"
    assert rows[0].argv[:2] == ["train", "--dataset"] and "--budget" in rows[0].argv
    jobs.cancel(app_data / "jobs.sqlite", rows[0].id)


def test_train_page_launches_label_noise_as_it_shows_it(app_data):
    """Single run: the fallible-source toggle becomes --set train.label_noise; grid: one --label-noise per level."""
    from ich.commands.study import build_spec
    from ich.commands.train import build_config
    from ich.cli import build_parser

    at = run_page(REPO / "pages" / "2_Train.py")
    at.radio(key="train_mode").set_value("single run").run()
    at.selectbox(key="train_init").set_value("random").run()
    at.toggle(key="train_noisy").set_value(True).run()
    at.number_input(key="train_noise_sens").set_value(0.8).run()
    assert not at.exception
    argv = shlex.split(at.code[0].value)[3:]
    assert build_config(build_parser().parse_args(argv)).train.label_noise == "exam=0.8/0.97"
    at.radio(key="train_mode").set_value("study grid (budgets x seeds)").run()
    at.multiselect(key="train_noise_levels").set_value([0, 10]).run()
    assert not at.exception
    argv = shlex.split(at.code[0].value)[3:]
    spec = build_spec(build_parser().parse_args(argv))
    assert spec.label_noise == ("", "exam=0.9/0.9,slice=0.9/0.9")
    assert [a for a, *_ in spec.arm_table] == ["weak", "strong", "weak-exam-sens90-spec90", "strong-slice-sens90-spec90"]
    at.multiselect(key="train_reads_grid").set_value([1, 3]).run()        # one reader against the majority of three
    spec = build_spec(build_parser().parse_args(shlex.split(at.code[0].value)[3:]))
    assert spec.label_noise == ("", "exam=0.9/0.9,slice=0.9/0.9", "exam=0.9/0.9x3,slice=0.9/0.9x3")
    assert "weak-exam-sens90-spec90-x3" in [a for a, *_ in spec.arm_table]
    assert not any(ms.key == "train_readers" for ms in at.multiselect)    # no recorded readers in this dataset


def test_train_page_offers_a_datasets_recorded_readers(app_data):
    """A dataset with CQ500-style read_R1..3 columns: single runs and grids can train on a reader's reads."""
    import pandas as pd

    from ich.cli import build_parser
    from ich.commands.study import build_spec
    from ich.commands.train import build_config

    ds = app_data / "datasets" / "tiny"
    ex = pd.read_parquet(ds / "exams.parquet")
    for r in ("R1", "R2", "R3"):
        ex[f"read_{r}"] = ex["label"]
    ex.to_parquet(ds / "exams.parquet", index=False)
    at = run_page(REPO / "pages" / "2_Train.py")
    at.radio(key="train_mode").set_value("single run").run()
    at.selectbox(key="train_init").set_value("random").run()
    at.selectbox(key="train_reader").set_value("R2").run()
    assert not at.exception
    assert build_config(build_parser().parse_args(shlex.split(at.code[0].value)[3:])).train.label_noise == "exam=R2"
    at.radio(key="train_mode").set_value("study grid (budgets x seeds)").run()
    at.multiselect(key="train_readers").set_value(["R1", "R1+R2+R3"]).run()
    assert not at.exception
    spec = build_spec(build_parser().parse_args(shlex.split(at.code[0].value)[3:]))
    assert spec.label_noise == ("", "exam=R1", "exam=R1+R2+R3")
    assert [a for a, *_ in spec.arm_table] == ["weak", "strong", "weak-exam-R1", "weak-exam-R1-R2-R3"]


def test_train_page_launches_acquisition_strategies_as_it_shows_them(app_data):
    from ich.cli import build_parser
    from ich.commands.study import build_spec

    at = run_page(REPO / "pages" / "2_Train.py")
    at.multiselect(key="train_acquisitions").set_value(["random", "coreset"]).run()
    at.number_input(key="train_rounds").set_value(4).run()
    assert not at.exception
    spec = build_spec(build_parser().parse_args(shlex.split(at.code[0].value)[3:]))
    assert spec.acquisition == ("random", "coreset") and dict(spec.overrides)["train.rounds"] == 4
    assert [a for a, *_ in spec.arm_table] == ["weak", "strong", "weak-coreset", "strong-coreset"]
    at.multiselect(key="train_acquisitions").set_value(["random", "attention"]).run()
    at.number_input(key="train_guide").set_value(12).run()
    assert not at.exception
    spec = build_spec(build_parser().parse_args(shlex.split(at.code[0].value)[3:]))
    assert spec.acquisition == ("random", "attention") and dict(spec.overrides) == {"train.guide_exams": 12}
    assert [a for a, *_ in spec.arm_table] == ["weak", "strong", "strong-attention"]   # attention buys slices


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dataset):
    """A tiny weak run, trained to completion on the tiny phantom (a few seconds)."""
    from ich.config import make_config
    from ich.train import fit

    root = tmp_path_factory.mktemp("app_runs")
    ds = root / "datasets" / "tiny"
    shutil.copytree(tiny_dataset, ds)
    cfg = make_config(str(ds), preset="tiny", supervision="weak", seed=0,
                      overrides={"train.epochs": 2, "train.threads": 1})
    fit(cfg, root / "runs" / "weak-tiny")
    return root


def test_inspect_page_shows_strip_heatmap_and_truth(finished_run, monkeypatch):
    monkeypatch.setenv("ICH_DATA", str(finished_run))
    monkeypatch.chdir(REPO)
    at = run_page(REPO / "pages" / "5_Inspect.py")
    assert not at.exception, at.exception
    assert at.selectbox(key="inspect_run").value.endswith("weak-tiny")
    labels = [m.label for m in at.metric]
    assert "Slice probability" in labels and "Sensitivity on test" in labels
    ood_shown = any("Out of distribution" in w.value for w in at.warning)
    assert ("Exam score" in labels) != ood_shown      # a flagged exam's score is greyed, not a metric
    at.selectbox(key="inspect_method").set_value("saliency").run()
    assert not at.exception
    at.selectbox(key="inspect_method").set_value("ig").run()
    assert not at.exception


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_dataset):
    """A tiny weak + strong study (3 budgets x 2 seeds) on a random frozen encoder, run in this process."""
    import torch

    from ich.models import build_encoder, save_encoder
    from ich.study import make_study, run_study

    root = tmp_path_factory.mktemp("app_study")
    ds = root / "datasets" / "tiny"
    shutil.copytree(tiny_dataset, ds)
    torch.manual_seed(0)
    enc = save_encoder(root / "encoders" / "enc.pt", build_encoder("compact", in_channels=1, embed_dim=32, width=16),
                       {"windows": ["brain"], "input_size": 64})
    spec = make_study("tiny", dataset=str(ds), init=str(enc), budgets=[4, 6, 8], seeds=[0, 1], pixel_slices=2)
    run_study(spec, root / "studies" / "tiny-study", executor="inline")
    return root


def test_compare_page_tests_two_study_cells_in_plain_words(finished_study, monkeypatch):
    from ich.evaluate import compare_runs

    monkeypatch.setenv("ICH_DATA", str(finished_study))
    monkeypatch.chdir(REPO)
    at = run_page(REPO / "pages" / "7_Compare.py")
    assert not at.exception, at.exception
    a, b = at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value
    assert "tiny-study / " in at.selectbox(key="compare_a").format_func(a)
    r = compare_runs(a, b)
    assert at.metric[0].value == f"{r['auc_a']:.3f}" and "DeLong p = " in at.markdown[0].value
    at.radio(key="compare_alternative").set_value("greater").run()
    assert "that A is better" in at.markdown[0].value and at.code[0].value.endswith("--alternative greater")
    at.selectbox(key="compare_b").set_value(a).run()
    assert "Pick two different runs" in at.warning[0].value


def test_runs_page_archives_a_study_and_restores_it(finished_study, monkeypatch, tmp_path):
    shutil.copytree(finished_study, tmp_path / "data")        # the module's study stays for the other tests
    monkeypatch.setenv("ICH_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    at = run_page(REPO / "pages" / "3_Runs.py")
    assert not at.exception, at.exception
    assert at.selectbox(key="runs_archive_pick").value.name == "tiny-study"
    at.button(key="runs_archive").click().run()
    assert "Archived to" in at.success[0].value and not (tmp_path / "data" / "studies" / "tiny-study").exists()
    at = run_page(REPO / "pages" / "3_Runs.py")
    assert "No run or study to archive" in at.caption[-1].value
    at.button(key="runs_restore").click().run()
    assert "Restored to" in at.success[0].value and (tmp_path / "data" / "studies" / "tiny-study" / "study.json").is_file()
    at = run_page(REPO / "pages" / "3_Runs.py")
    at.text_input(key="runs_new_name").set_value("my study/../x").run()
    at.button(key="runs_rename").click().run()
    assert "study name must be 1-64 letters" in at.error[0].value
    at.text_input(key="runs_new_name").set_value("december").run()
    at.button(key="runs_rename").click().run()
    assert "Renamed to december" in at.success[0].value and (tmp_path / "data" / "studies" / "december").is_dir()


def test_results_page_shows_curves_plan_and_delong(finished_study, monkeypatch):
    monkeypatch.setenv("ICH_DATA", str(finished_study))
    monkeypatch.chdir(REPO)
    at = run_page(REPO / "pages" / "4_Results.py")
    assert not at.exception, at.exception
    assert at.selectbox(key="results_pick").value.endswith("tiny-study")
    assert len(at.get("plotly_chart")) >= 3          # two learning curves and the ROC
    at.slider(key="results_target").set_value(0.5).run()
    assert not at.exception
    assert at.success or at.warning                  # a plan, or why there is none
    at.radio(key="results_metric").set_value("sequence_f1").run()
    assert not at.exception


@pytest.mark.parametrize("form,button", [("Name", "Generate"), ("Dataset name", "Import")])
def test_data_page_refuses_a_name_that_leaves_the_data_folder(app_data, tmp_path, form, button):
    from ich import jobs

    at = run_page(REPO / "pages" / "1_Data.py")
    next(t for t in at.text_input if t.label == form).set_value("../../x")
    if button == "Import":
        next(t for t in at.text_input if t.label.startswith("Source folder")).set_value(str(tmp_path))
    db = app_data / "jobs.sqlite"
    try:
        next(b for b in at.button if b.label == button).click().run()
    finally:  # a page that lets the name through starts real jobs: stop them
        for job in jobs.list_jobs(db) if db.exists() else []:
            if job.state not in jobs.FINAL_STATES:
                jobs.cancel(db, job.id)
    assert not at.exception
    assert any("must be 1-64 letters" in e.value and "'x'" in e.value for e in at.error)
    assert not db.exists() or jobs.list_jobs(db) == []
    assert not (app_data.parent / "x").exists() and not (app_data / "x").exists()


def _upload(root, name, n):
    from _series import ct_small_series, zip_folder
    from ich.uploads import import_upload

    return str(import_upload(zip_folder(ct_small_series(root.parent / f"src-{name}", n=n)), name, root / "uploads",
                             size=64))


def test_inspect_uploads_in_a_row_one_slice_and_a_body_ct_flagged(finished_run, monkeypatch):
    monkeypatch.setenv("ICH_DATA", str(finished_run))
    monkeypatch.chdir(REPO)
    body = _upload(finished_run, "body", 24)
    one = _upload(finished_run, "one", 1)
    at = run_page(REPO / "pages" / "5_Inspect.py", inspect_source=body)
    assert not at.exception, at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "does not look like a head" in warnings and "Out of distribution: do not trust this score" in warnings
    assert any("not reliable: out of distribution" in m.value for m in at.markdown)
    assert any("No ground truth for this series" in c.value and "says nothing about whether there is a lesion"
               in c.value for c in at.caption)
    assert "Exam score" not in [m.label for m in at.metric]
    at.slider[0].set_value(20).run()                               # a slice beyond what the next series has
    at.selectbox(key="inspect_source").set_value(one).run()        # the second upload, same session
    assert not at.exception, at.exception
    assert len(at.slider) == 0 and any("one slice" in c.value for c in at.caption)
    assert any("only 1 slice" in w.value.lower() for w in at.warning)
    at.selectbox(key="inspect_source").set_value(body).run()       # and back
    assert not at.exception, at.exception
    at.button(key="inspect_remove").click().run()                  # remove it: back to the run's own exams
    assert not at.exception, at.exception
    assert at.selectbox(key="inspect_source").value == "own"
    assert not (finished_run / "uploads" / "body").exists()


def test_home_shows_the_first_run_chain_and_queues_the_quick_study_behind_it(tmp_path, monkeypatch):
    from ich import firstrun, jobs

    root = tmp_path / "data"
    monkeypatch.setenv("ICH_DATA", str(root))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(jobs, "start_queued", lambda *a, **k: [])    # the chain stays queued: nothing runs
    actions = firstrun.start_chain()
    at = run_page(REPO / "app.py")
    assert not at.exception, at.exception
    assert any("Setting up the default phantom" in h.value for h in at.subheader)
    assert len(at.get("progress")) == 3
    queue = next(b for b in at.button if b.label == "Queue the quick study")
    at = queue.click().run()
    assert not at.exception, at.exception
    study = next(j for j in jobs.list_jobs(root / "jobs.sqlite") if j.kind == "study")
    assert jobs.waits_for(root / "jobs.sqlite", study.id) == actions[-1]["job_id"]
    assert "starts by itself when the encoder is ready" in at.success[0].value
    at = at.run()
    assert not any(b.label == "Queue the quick study" for b in at.button)     # queued once
    assert "queued (job" in at.success[0].value


def test_home_offers_to_build_the_phantom_when_nothing_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("ICH_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(REPO)
    at = run_page(REPO / "app.py")
    assert not at.exception
    assert any(b.label == "Build the default phantom" for b in at.button)


def test_home_offers_to_resume_a_stopped_chain(tmp_path, monkeypatch):
    from ich import firstrun, jobs

    root = tmp_path / "data"
    monkeypatch.setenv("ICH_DATA", str(root))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(jobs, "start_queued", lambda *a, **k: [])
    synth = firstrun.start_chain()[0]["job_id"]
    jobs.cancel(root / "jobs.sqlite", synth)          # the import and pretraining wait on it
    at = run_page(REPO / "app.py")
    assert not at.exception, at.exception
    assert "stopped at: generating the default phantom" in at.warning[0].value
    at = next(b for b in at.button if b.label == "Resume setting it up").click().run()
    assert not at.exception, at.exception
    states = {j.kind: j.state for j in reversed(jobs.list_jobs(root / "jobs.sqlite"))}   # the newest job of each
    assert states == {"synth": "queued", "import": "queued", "pretrain": "queued"}


def test_glossary_finds_a_term_and_says_when_nothing_matches(app_data):
    at = run_page(REPO / "pages" / "6_Glossary.py")
    assert not at.exception and len(at.markdown) >= 15
    at.text_input(key="glossary_query").set_value("specificity").run()
    found = [m.value for m in at.markdown]
    assert found and all("specificity" in m.lower() for m in found) and any("Label noise" in m for m in found)
    at.text_input(key="glossary_query").set_value("zebra").run()
    assert "No entry mentions 'zebra'" in at.info[0].value


def test_home_is_the_first_page_and_every_page_is_in_the_sidebar():
    """app.py lists the pages (st.navigation); a page file it forgets would be unreachable."""
    text = (REPO / "app.py").read_text()
    listed = re.findall(r'st\.Page\("(pages/[^"]+\.py)", title="([^"]+)"', text)
    assert listed[0] == ("pages/0_Home.py", "Home") and re.search(r'pages/0_Home.py".*default=True', text)
    assert sorted(p for p, _ in listed) == sorted(f"pages/{p.name}" for p in PAGES)


def test_the_toolbar_is_minimal_for_clinicians():
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "minimal"        # no Deploy button, no developer menu


def test_results_shows_a_launched_study_before_it_has_written_anything(app_data):
    """Home → Results lands on the queued study (not "No study yet") and says where it stands."""
    from ich import jobs

    out = app_data / "studies" / "quick-queued"
    job = jobs.submit(app_data / "jobs.sqlite", ["study", "--preset", "quick", "--out", str(out)], kind="study",
                      out_dir=out, start=False)
    try:
        at = run_page(REPO / "pages" / "4_Results.py", results_study=str(out))
        assert not at.exception, at.exception
        assert at.selectbox(key="results_pick").value == str(out)
        assert any("has not written its first results yet" in i.value for i in at.info)
        assert not any("No study yet" in i.value for i in at.info)
        assert any("Queued" in str(p.proto) for p in at.get("progress")), [str(p.proto) for p in at.get("progress")]
    finally:
        jobs.cancel(app_data / "jobs.sqlite", job.id)
