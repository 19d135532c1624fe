"""Build the default phantom, its import and its encoder as background jobs (what `make run` does first).

Returns at once: the three steps run as one chain of jobs (see ``ich.firstrun``) while the app is
already up; Home shows their progress. Safe to repeat: finished steps are skipped, running ones
left alone, interrupted ones resumed. Examples:

  python -m ich firstrun            # queue what is missing, print the chain, return
  python -m ich firstrun --wait     # the same, then wait until the chain is done (make phantom)
  python -m ich firstrun --status   # only print the chain
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--wait", action="store_true", help="wait until every step is done (exit 1 if one fails)")
    parser.add_argument("--status", action="store_true", help="print the chain's state and start nothing")


def _print(rows: list[dict]) -> None:
    for r in rows:
        pct = "" if r["progress"] is None or r["state"] == "done" else f" {100 * r['progress']:.0f}%"
        eta = f", about {r['eta_s']:.0f} s left" if r["eta_s"] is not None else ""
        job = f" (job {r['job_id']})" if r["job_id"] and r["state"] != "done" else ""
        print(f"  {r['step']:<9} {r['state']}{pct}{eta}{job}" + (f": {r['error']}" if r["error"] else ""))


def run(args: argparse.Namespace) -> int:
    import time

    from ich import firstrun

    if not args.status:
        actions = firstrun.start_chain()
        started = [a for a in actions if a["action"] in ("submitted", "resumed")]
        if started:
            print("first run: building in the background (" + ", then ".join(
                f"{a['step']} job {a['job_id']}" for a in actions if a["job_id"]) + "); Home shows the progress")
        elif any(a["action"] == "active" for a in actions):
            print("first run: the chain is already running; Home shows the progress")
    rows = firstrun.chain_status()
    if all(r["state"] == "done" for r in rows):
        print("first run: the default phantom and its encoder are ready")
        return 0
    _print(rows)
    while args.wait:
        time.sleep(2)
        rows = firstrun.chain_status()
        if any(r["state"] in ("failed", "cancelled", "missing") for r in rows):
            _print(rows)
            return 1
        if all(r["state"] == "done" for r in rows):
            print("first run: the default phantom and its encoder are ready")
            return 0
    return 0
