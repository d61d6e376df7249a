"""Advance the reproduction campaign of reproduction/ledger.json by one GPU lease, then merge what came back.

    python tools/gpu_lease.py status                      # the stages, and what the next lease would run
    python tools/gpu_lease.py next --budget-s 540         # on the GPU machine: runs, writes $OUT
    python tools/gpu_lease.py merge <folder with lease.json ...>    # here: ledger, weights/, docs table
    python tools/gpu_lease.py table                       # regenerate the tables from the ledger

`next` runs the ledger's first unfinished stage (measuring it first when the ledger has no times for it on this
device), as many of its runs at once as pay, for the official number of epochs or, when that does not fit, a
proportionally shortened schedule, then the next stages while time is left; a teacher stage's weights are
exported as fp16. It writes into $OUT (or --out) lease.json, logs.tar.xz and any teacher's .safetensors, within
the device tool's limits (8 files, 16 MiB each, 64 MiB in all). See docs/reproduction.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from campaign.ledger import LedgerError, load_ledger, pending_runs, stage_plan  # noqa: E402
from campaign.report import render_tables  # noqa: E402
from campaign.schedule import decide_wave  # noqa: E402


def _next(args: argparse.Namespace) -> int:
    from campaign.outbox import check_out_dir
    from campaign.runner import LeaseRunner

    out = args.out or os.environ.get("OUT")
    if not out:
        raise LedgerError("give --out <folder> or set OUT (the folder whose files come back from the GPU machine)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work or args.root / "outputs" / "lease" / stamp
    runner = LeaseRunner(args.ledger, args.root, Path(out), work, args.budget_s, args.set, max_stages=args.max_stages)
    record = runner.run()
    problems = check_out_dir(Path(out))
    return 1 if problems or record.get("error") else 0


def _merge(args: argparse.Namespace) -> int:
    from campaign.merge import merge_lease

    for line in merge_lease(args.ledger, args.folder, args.root, args.doc):
        print(line)
    return 0


def _table(args: argparse.Namespace) -> int:
    from campaign.merge import write_tables

    for path in write_tables(load_ledger(args.ledger), args.root, args.doc):
        print(f"wrote {path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    ledger = load_ledger(args.ledger)
    print(render_tables(ledger))
    stage = next((s for s in ledger["stages"] if s["status"] != "done"), None)
    if stage is None:
        print("every stage is done")
        return 0
    plan = stage_plan(ledger, stage)
    reserve = plan["pack_s"] + (plan["export_s"] if stage["export"] else 0)
    known = {device: found[stage["id"]] for device, found in ledger["measurements"].items() if stage["id"] in found}
    print(f"next: stage {stage['id']} ({stage['title']}), {len(pending_runs(stage))} run(s) pending")
    if not known:
        print("  no measurement on any device yet: the lease probes it first")
    for device, measurements in known.items():
        wave = decide_wave(
            fixed_epochs=stage["epochs"],
            pending=len(pending_runs(stage)),
            measurements=measurements,
            remaining_s=args.budget_s - reserve,
            capacity_s=args.budget_s - reserve,
            plan=plan,
        )
        what = wave.reason or f"{wave.runs} run(s) at once, {wave.epochs} epochs, about {wave.predicted_s:.0f} s"
        print(f"  on {device}, with --budget-s {args.budget_s:.0f}: {what}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root the ledger's paths start from")
    parser.add_argument("--ledger", type=Path, help="the ledger (default: <root>/reproduction/ledger.json)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("next", help="run what fits the budget; write $OUT")
    run.add_argument("--budget-s", type=float, required=True, help="seconds this command may take, $OUT included")
    run.add_argument("--out", help="where the files that come back go (default: $OUT)")
    run.add_argument("--work", type=Path, help="a fresh folder for runs and logs (default: outputs/lease/<time>)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="an sdd-train override added to every run (repeatable), e.g. data.root=/data",
    )
    run.add_argument("--max-stages", type=int, help="start at most this many stages")
    merge = commands.add_parser("merge", help="merge a lease's files into the ledger, weights/ and the docs")
    merge.add_argument("folder", type=Path, help="the folder holding lease.json (and the weights) that came back")
    for sub in (merge, commands.add_parser("table", help="regenerate the tables from the ledger")):
        sub.add_argument("--doc", type=Path, help="the page with the tables (default: <root>/docs/reproduction.md)")
    status = commands.add_parser("status", help="the stages, and what the next lease would run")
    status.add_argument("--budget-s", type=float, default=540.0)
    args = parser.parse_args(argv)
    args.ledger = args.ledger or args.root / "reproduction" / "ledger.json"
    if getattr(args, "doc", None) is None and args.command in ("merge", "table"):
        args.doc = args.root / "docs" / "reproduction.md"
    try:
        return {"next": _next, "merge": _merge, "table": _table, "status": _status}[args.command](args)
    except LedgerError as error:
        print(f"gpu_lease.py {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
