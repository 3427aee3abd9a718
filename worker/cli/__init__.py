"""The ``segment-worker`` command line: one module per command group, each with a
``register(subparsers)``; errors every command can meet are turned into messages here."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from worker.cli import (
    audience,
    bench,
    changes,
    demo,
    fit,
    operator,
    produce,
    redis,
    replay,
    rules,
    run,
    simulate,
)
from worker.core.rules import RulesError
from worker.errors import UsageError
from worker.settings import SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (2 for bad rules or settings)."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except RulesError as exc:
        for problem in exc.problems:
            print(f"segment-worker: invalid rules: {problem}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"segment-worker: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"segment-worker: bad setting: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `segment-worker replay ... | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment-worker",
        description="Real-time customer segmentation: order and visit events in, per-customer "
        "RFM state, classes along several dimensions, and segment-change events out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = (
        replay,
        produce,
        run,
        operator,
        audience,
        changes,
        demo,
        simulate,
        bench,
        rules,
        redis,
        fit,
    )
    for group in groups:
        group.register(sub)
    return parser
