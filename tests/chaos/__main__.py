"""`python -m tests.chaos`: run the campaign's parts, print its table, write it as JSON."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import tests.chaos
from tests.chaos import PARTS, run_part
from tests.chaos.report import render
from tests.chaos.tally import Tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=(tests.chaos.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--short", action="store_true", help="the quick version make test runs")
    parser.add_argument("--part", action="append", choices=list(PARTS), help="only these parts")
    parser.add_argument("--seed", type=int, default=None, help="replay a campaign")
    default_json = Path(tempfile.gettempdir()) / "checkpoint-worker-chaos" / "latest.json"
    parser.add_argument("--json", type=Path, default=default_json, help=f"default {default_json}")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    seed_value = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    sys.set_int_max_str_digits(0)
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    tally = Tally()
    started = time.monotonic()
    try:
        for name in args.part or list(PARTS):
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            run_part(name, root, short=args.short, seed_value=seed_value, tally=tally)
            print(
                f"chaos: {name} done in {time.monotonic() - began:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "mode": "short" if args.short else "full",
        "seed": seed_value,
        "parts": args.part or list(PARTS),
        "seconds": round(time.monotonic() - started, 1),
        **tally.to_json(),
        "clean": tally.clean,
    }
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n(written to {args.json}{'; work kept in ' + str(root) if args.keep else ''})")
    return 0 if tally.clean else 1


if __name__ == "__main__":
    sys.exit(main())
