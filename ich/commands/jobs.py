"""List, cancel or resume background jobs (the app's queue in data/jobs.sqlite)."""

from __future__ import annotations

import time

DEFAULT_DB = "data/jobs.sqlite"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "cancel", "resume", "log"], help="what to do")
    parser.add_argument("job_id", nargs="?", type=int, help="job id (for cancel, resume, log)")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"job database (default {DEFAULT_DB})")


def run(args) -> int:
    from ich import jobs

    if args.action != "list" and args.job_id is None:
        raise ValueError(f"`jobs {args.action}` needs a job id; see `python -m ich jobs list`")
    if args.action == "list":
        rows = jobs.list_jobs(args.db)
        if not rows:
            print(f"no jobs in {args.db}")
        for j in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created))
            print(f"{j.id:>4}  {j.state:<9}  {j.kind:<8}  {when}  {j.title}" + (f"  ({j.error})" if j.error else ""))
    elif args.action == "cancel":
        print(f"job {args.job_id}: {jobs.cancel(args.db, args.job_id).state}")
    elif args.action == "resume":
        job = jobs.resume(args.db, args.job_id)
        print(f"job {args.job_id} resumed as job {job.id} ({job.state})")
    else:
        print(jobs.tail_log(jobs.get(args.db, args.job_id), 200))
    return 0
