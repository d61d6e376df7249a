"""``sdd-summary DIR``: the runs of a sweep as one table per setting, beside the published numbers.

Every run folder under DIR (a folder holding ``results.json`` or ``config_resolved.yaml``) is read and
grouped by setting: what was run apart from the seed (``setting`` of results.json, or data + teacher +
student + method for an ad-hoc run) plus the overrides that change what is computed. Each row gives, over
the setting's finished runs (seeds), mean ± standard deviation and n of the best-epoch and the last-epoch
validation top-1 and top-5, in percent, beside the published top-1 (and top-5 where published) and which
of the two epochs the paper reports. Interrupted, failed, diverged and unfinished runs (no results.json:
still running, or dead) are listed in their row, never averaged in; below the table, every failed or
diverged job is listed with its folder, its overrides and its error. A warning goes to stderr for every
setting with fewer than three finished seeds. Written into DIR (or ``--out``): ``summary.md``,
``summary.csv``, and two figures, ``summary_bars.png`` (best top-1 per setting beside the published number)
and ``summary_curves.png`` (validation top-1 per epoch of every run).

sdd-summary overwrites only its own files: ``summary.md`` starts with the line ``<!-- written by sdd-summary -->``,
and while that file is its own the other three are too. When one of the four exists and was not written by
sdd-summary (another command's table, say), it stops with exit status 2 and asks for ``--out DIR``. Each file
is written whole or not at all; a folder that cannot be written (no permission, a full disk) is a two-line
message, as is any other mistake of the command line (``SDD_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sdd_lightning.errors import SummaryError
from sdd_lightning.reporting.summary import failed_markdown, to_markdown, warnings, write_summary

__all__ = ["main"]


def _debug_requested() -> bool:
    """``reporting.debug_requested()``, imported (with Lightning, seconds) only when one of its variables is set."""
    if not {"SDD_DEBUG", "HYDRA_FULL_ERROR"} & set(os.environ):
        return False
    from sdd_lightning.cli.messages import debug_requested

    return debug_requested()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``sdd-summary``: prints the table and writes it and the figures.

    Returns the exit status: 0, or 2 with a two-line message on stderr for a folder it cannot use.
    """
    parser = argparse.ArgumentParser(prog="sdd-summary", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep folder (or any folder holding run folders)")
    parser.add_argument("--out", type=Path, default=None, help="where to write summary.md/.csv/.png (default: DIR)")
    args = parser.parse_args(argv)
    try:
        runs, rows, written = write_summary(args.directory, args.out)
    except SummaryError as error:
        if _debug_requested():
            raise
        print(f"sdd-summary: {error}", file=sys.stderr)
        return 2
    print(to_markdown(rows) + failed_markdown(rows), flush=True)
    for line in warnings(rows):
        print(line, file=sys.stderr, flush=True)
    print(f"{len(runs)} runs; written to {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
