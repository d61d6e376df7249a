"""The mutation score of the last ``make mutation`` run, per file, without the equivalent mutants.

mutmut keeps each mutated file's results in ``mutants/<file>.meta``; docs/testing.md lists the surviving mutants that
are equivalent to the original code (a table whose rows start with the mutant's name in backticks). The score is
killed / (mutants - equivalent). A timeout is not counted as a kill: on a loaded machine a surviving mutant's tests
can outrun mutmut's time limit too, so a timed-out mutant is run again like a survivor. Prints a Markdown table,
then every mutant that still counts against the score, so that the output can be pasted into docs/testing.md.

    python tools/mutation_score.py [--mutants mutants] [--equivalents docs/testing.md] [--names]

``--names`` prints only the names of the mutants still counted against the score, one per line: what
``make mutation-again`` runs again after new tests were written.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

# A row of the equivalent-mutant table: | `sdd_lightning.method.heads.x_validate_scales__mutmut_3` | why |
_EQUIVALENT_ROW = re.compile(r"^\|\s*`(sdd_lightning\.[^`]+__mutmut_\d+)`")
DETECTED = ("killed",)


def equivalent_mutants(doc: Path) -> set[str]:
    """The mutant names that ``doc``'s equivalent-mutant table lists (empty when the file is missing)."""
    if not doc.is_file():
        return set()
    return {m.group(1) for line in doc.read_text().splitlines() if (m := _EQUIVALENT_ROW.match(line))}


def results(mutants: Path) -> dict[str, dict[str, str]]:
    """Each mutated file (relative to ``mutants/``) -> its mutants' statuses (``killed``, ``survived``, ...)."""
    by_file = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        by_file[str(meta.relative_to(mutants).with_suffix(""))] = {
            name: status_by_exit_code[code] for name, code in codes.items()
        }
    return by_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's working folder")
    parser.add_argument("--equivalents", type=Path, default=Path("docs/testing.md"), help="the equivalent-mutant table")
    parser.add_argument("--names", action="store_true", help="only the names of the mutants counted against it")
    args = parser.parse_args()
    by_file = results(args.mutants)
    if not by_file:
        raise SystemExit(f"no mutmut results under {args.mutants}/: run `make mutation` first")
    equivalent = equivalent_mutants(args.equivalents)
    if args.names:
        for statuses in by_file.values():
            for name, _ in _missed(statuses, equivalent):
                print(name)
        return
    print(
        "| file | mutants | killed | timed out | equivalent | survived | no test ran it | not run | score "
        "| score of those run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals: Counter[str] = Counter()
    missed = []
    for path, statuses in by_file.items():
        counts = Counter("equivalent" if name in equivalent else status for name, status in statuses.items())
        counts["mutants"] = len(statuses)
        totals.update(counts)
        missed += [f"{status:>14}  {name}" for name, status in _missed(statuses, equivalent)]
        print(_row(path, counts))
    print(_row("**all**", totals))
    if missed:
        print("\nStill counted against the score:")
        print("\n".join(missed))


def _missed(statuses: dict[str, str], equivalent: set[str]) -> list[tuple[str, str]]:
    """(name, status) of the mutants that count against the score: neither killed nor equivalent."""
    return [(n, s) for n, s in sorted(statuses.items()) if s not in DETECTED and n not in equivalent]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _row(label: str, counts: Counter[str]) -> str:
    """The score over every non-equivalent mutant, and over those that ran (an unfinished run leaves some out)."""
    counted = counts["mutants"] - counts["equivalent"]
    killed = sum(counts[s] for s in DETECTED)
    columns = ("mutants", "killed", "timeout", "equivalent", "survived", "no tests", "not checked")
    scores = (_percent(killed, counted), _percent(killed, counted - counts["not checked"]))
    return f"| {label} | " + " | ".join(str(counts[c]) for c in columns) + " | " + " | ".join(scores) + " |"


if __name__ == "__main__":
    main()
