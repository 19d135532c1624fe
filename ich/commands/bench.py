"""Benchmark this machine and ich's hot paths; print a table and write bench.json.

Goals are ratios measured back to back in one run (they hold on a busy machine); absolute
times come with the machine, thread count and load average they were measured under.
Benchmarks: roofline, peer_race, inference, ingestion, study, growth, synth, pretrain, embed.
Examples:

  python -m ich bench --out bench.json                  # everything on the default phantom (minutes)
  python -m ich bench --only roofline,peer_race --out b.json
  python -m ich bench --quick --out /tmp/bench.json     # tiny inputs, seconds (a smoke test)

The default phantom (data/datasets/phantom, data/dicom/phantom) is only read; make it with
`make phantom`. The MONAI peer needs `pip install -r requirements-bench.txt`.
"""

from __future__ import annotations

import argparse


def _names(text: str) -> list[str]:
    return [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--out", default="bench.json", help="JSON report to write (default bench.json)")
    p.add_argument("--quick", action="store_true", help="tiny generated inputs: every benchmark in seconds")
    p.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                   help="run only these benchmarks (repeatable or comma-separated)")
    p.add_argument("--repeats", type=int, help="timed repeats of each loop (default 3, quick 2)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default, one per core; 1 with --quick)")
    p.add_argument("--workers", type=int, default=2, help="import processes, for ich and the pydicom baseline (default 2)")
    p.add_argument("--dataset", help="the default phantom dataset (default data/datasets/phantom; only read)")
    p.add_argument("--dicom", help="its DICOM tree (default data/dicom/phantom; only read)")
    p.add_argument("--profile", action="store_true",
                   help="attach a torch.profiler (or cProfile) table to every benchmark with an unmet goal")
    p.add_argument("--workdir", help="scratch folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    import sys

    from ich.bench import BENCHMARKS, format_table, run_benchmarks, write_report

    if args.list:
        for name, fn in BENCHMARKS.items():
            print(f"{name:10s} {' '.join((fn.__doc__ or '').strip().split(chr(10) * 2)[0].split())}")
        return 0
    names = [n for item in args.only for n in _names(item)] or None

    def on_progress(event: dict) -> None:
        if args.quiet:
            return
        if "done" in event:
            r = event["done"]
            state = r["status"] if r["status"] != "ok" else f"{r['seconds']} s"
            print(f"[{event['bench']}] done ({state})", file=sys.stderr, flush=True)
        else:
            print(f"[{event['bench']}] {event['message']}", file=sys.stderr, flush=True)

    report = run_benchmarks(names, quick=args.quick, on_progress=on_progress, repeats=args.repeats,
                            threads=args.threads, dataset=args.dataset, dicom=args.dicom, workers=args.workers,
                            profile=args.profile, workdir=args.workdir, keep=args.keep)
    path = write_report(report, args.out)
    m = report["machine"]
    print(f"{m['cpu']}, {m['usable_cpus']} usable CPUs, torch {report['torch']}, {report['threads']} threads, "
          f"load {report['loadavg_start']} -> {report['loadavg_end']}, {report['seconds']} s")
    print(format_table(report, markdown=args.markdown))
    print(f"wrote {path}")
    failed = [n for n, r in report["benchmarks"].items() if r["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)} (see the errors in {path})", file=sys.stderr)
        return 1
    return 0
