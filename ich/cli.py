"""The ``python -m ich`` command line: one verb per module in ``ich/commands``.

Each verb module defines ``add_arguments(parser)`` and ``run(args) -> int``; its
docstring's first line is the verb's help. Verbs are discovered, so adding one never
touches this file. User mistakes (``ValueError``, ``FileNotFoundError``,
``FileExistsError``, ``RuntimeError``) print one clear line and exit 2, never a traceback.
SIGTERM (``kill``, ``jobs cancel``) is handled like Ctrl-C: it raises ``KeyboardInterrupt`` in
the command, so temporary folders are removed on the way out (exit 143).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading

from tqdm.contrib.logging import logging_redirect_tqdm

import ich.commands

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, RuntimeError, KeyError)


def verb_modules() -> dict[str, str]:
    """Map verb name -> module name, for every module in ``ich/commands``."""
    out = {}
    for info in pkgutil.iter_modules(ich.commands.__path__):
        if not info.name.startswith("_"):
            out[info.name.rstrip("_").replace("_", "-")] = f"ich.commands.{info.name}"
    return dict(sorted(out.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ich",
        description="ICH label-budget lab: what kind of labels to buy, and how many.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for verb, module_name in verb_modules().items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or verb).strip()
        sub = verbs.add_parser(verb, help=doc.splitlines()[0], description=doc)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    terminated, pid = [], os.getpid()

    def on_sigterm(signum, _frame):
        # once only: `jobs cancel` signals the whole group and the job worker forwards it too, and a
        # second KeyboardInterrupt must not cut the clean-up short (SIGKILL still ends a stuck command)
        if os.getpid() != pid:  # a forked worker inherited this handler: end as SIGTERM always did
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not terminated:
            terminated.append(signum)
            raise KeyboardInterrupt(f"signal {signum}")

    in_main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        with logging_redirect_tqdm():        # a log line never lands inside a progress bar's redraw
            return int(args._run(args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("terminated (SIGTERM); stopped as for Ctrl-C" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
