"""Tests for ich.bench: the --quick smoke (tiny inputs, valid JSON), the report schema and option errors."""

import json

import pytest

from ich.bench import BENCHMARKS, figure, format_table, goal, read_report, run_benchmarks, validate_report
from ich.cli import main

SMOKE = "roofline,peer_race,inference,ingestion,study,embed"


@pytest.mark.slow
def test_quick_bench_writes_a_valid_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--threads", "1", "--only", SMOKE, "--out", str(out), "--quiet"])
    assert code == 0
    report = read_report(out)                       # validates the schema
    assert list(report["benchmarks"]) == SMOKE.split(",")
    assert report["quick"] is True and report["threads"] == 1
    assert report["machine"]["usable_cpus"] >= 1 and report["torch"]
    assert len(report["loadavg_start"]) == 3
    for name, res in report["benchmarks"].items():
        assert res["status"] == "ok", (name, res.get("error"))
        for key, fig in res["figures"].items():
            assert fig["n"] >= 1 and fig["median"] is not None, (name, key, fig)
    roofline = report["benchmarks"]["roofline"]
    roof, limit = roofline["figures"], roofline["params"]["limit"]
    assert roof[f"matmul_{limit}"]["n"] == 2 and roof["compact_ratio"]["median"] > 0
    assert ("matmul_bf16" in roof) == (limit == "bf16")          # emulated bf16 is not timed (minutes, no limit)
    race = report["benchmarks"]["peer_race"]
    assert [g["figure"] for g in race["goals"]][0] == "cell_wall_ratio"   # the cell race (skipped without MONAI)
    assert "reference_ratio" in race["figures"]
    study = report["benchmarks"]["study"]["figures"]
    assert study["cell"]["n"] == 2 and study["peak_rss"]["median"] > 50       # MiB
    printed = capsys.readouterr().out
    assert "compact_ratio" in printed and "wrote" in printed


def test_figure_and_goal_summarise_repeats():
    f = figure([2.0, 1.0, 3.0], "s")
    assert (f["median"], f["min"], f["max"], f["n"]) == (2.0, 1.0, 3.0, 3)
    assert f["spread"] == pytest.approx(0.5)
    assert figure([4.0], "s")["spread"] is None
    figs = {"t": f}
    assert goal(figs, "t", "<=", 2.5)["met"] is True
    assert goal(figs, "t", ">=", 2.5)["met"] is False
    skipped = goal(figs, "missing", ">=", 1.5, skipped="no peer")
    assert skipped["met"] is None and skipped["skipped"] == "no peer"


def _report():
    figs = {"t": figure([1.0, 1.2], "s")}
    return {"format": "ich-bench/1", "created": "now", "quick": True, "machine": {}, "torch": "x", "threads": 1,
            "workers": 1, "repeats": 2, "loadavg_start": [0, 0, 0], "loadavg_end": [0, 0, 0], "seconds": 1.0,
            "benchmarks": {"b": {"name": "b", "title": "B", "status": "ok", "figures": figs,
                                 "goals": [goal(figs, "t", "<=", 2.0)], "notes": [], "params": {},
                                 "seconds": 1.0, "cpu_share": 1.0, "loadavg": [None, None]}}}


def test_validate_report_accepts_a_good_report_and_formats_it():
    r = _report()
    validate_report(r)
    json.loads(json.dumps(r))
    table = format_table(r, markdown=True)
    assert table.splitlines()[0].startswith("| benchmark") and "| yes |" in table


def test_validate_report_missing_figure_key():
    r = _report()
    del r["benchmarks"]["b"]["figures"]["t"]["median"]
    with pytest.raises(ValueError, match=r"figure b\.t lacks \['median'\]"):
        validate_report(r)


def test_validate_report_goal_on_unknown_figure():
    r = _report()
    r["benchmarks"]["b"]["goals"][0]["figure"] = "nope"
    with pytest.raises(ValueError, match="unknown figure 'nope'"):
        validate_report(r)


def test_read_report_not_json(tmp_path):
    p = tmp_path / "bench.json"
    p.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_report(p)


def test_unknown_benchmark_name_suggests_one():
    assert "peer_race" in BENCHMARKS
    with pytest.raises(ValueError, match=r"benchmark must be one of .* \(did you mean 'roofline'\?\)"):
        run_benchmarks(["roofline2"], quick=True)


def test_bad_repeats():
    with pytest.raises(ValueError, match="repeats must be a positive integer, not -1"):
        run_benchmarks(["roofline"], quick=True, repeats=-1)
