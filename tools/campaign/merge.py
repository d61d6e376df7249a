"""``merge``: put what a lease brought back into the ledger, ``weights/`` and the table of ``docs/reproduction.md``.

Everything is checked before anything is written: the lease record's format, that each of its stages and runs is
in the ledger, that each exported weights file is there with the sha256 its record gives, and that a stage's
epoch count agrees with the one the ledger fixed. Then the weights (and their model cards) are copied, finished
runs become ``done`` with their results, unfinished ones are kept as attempts (never reported), measurements are
filed under the device, the lease is listed, and the tables are regenerated. A lease is merged once: merging it
again changes nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from campaign.ledger import LedgerError, load_ledger, save_ledger, stage_by_id
from campaign.outbox import sha256_file
from campaign.report import render_tables, render_weights_readme, replace_between_markers
from campaign.runner import LEASE_FORMAT

__all__ = ["merge_lease", "write_tables"]

RESULT_KEYS = (
    "val/acc1",
    "val/acc1_best",
    "val/acc5",
    "val/acc5_best",
    "test/acc1",
    "test/acc5",
    "teacher/acc1",
    "published",
    "published_top5",
    "published_metric",
    "wall_time_s",
    "device",
    "versions",
    "git_commit",
)


def _read_lease(folder: Path) -> dict[str, Any]:
    path = folder / "lease.json"
    if not path.is_file():
        raise LedgerError(f"no lease.json in {folder}: give the folder the lease's files came back to")
    try:
        lease = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LedgerError(f"{path} is not valid JSON ({error}); the lease's files did not come back whole") from None
    if not isinstance(lease, dict) or lease.get("format") != LEASE_FORMAT:
        raise LedgerError(f"{path} is not an {LEASE_FORMAT}")
    return lease


def _find_run(stage: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    for run in stage["runs"]:
        if run["id"] == run_id:
            return run
    raise LedgerError(
        f"run {run_id} of the lease is not in stage {stage['id']} of the ledger; merge with the ledger "
        "the lease ran from"
    )


def _check(ledger: dict[str, Any], lease: dict[str, Any], folder: Path) -> dict[str, dict[str, Any]]:
    """Checks the lease against the ledger and the files; returns the exports by stage id."""
    exports = {}
    for export in lease["exports"]:
        stage = stage_by_id(ledger, export["stage"])
        if not stage["export"] or stage["export"]["weights"] != export["destination"]:
            raise LedgerError(
                f"the lease exported {export['file']} for {export['destination']}, but stage "
                f"{stage['id']} of the ledger exports {stage['export'] and stage['export']['weights']}"
            )
        path = folder / export["file"]
        if not path.is_file():
            raise LedgerError(
                f"{export['file']} (the weights of stage {stage['id']}) did not come back: {path} is "
                "missing; the stage stays pending unless the file is found"
            )
        if sha256_file(path) != export["sha256"]:
            raise LedgerError(
                f"{path} does not have the sha256 the lease recorded ({export['sha256'][:12]}...): it "
                "was damaged on the way"
            )
        exports[stage["id"]] = export
    for record in lease["runs"]:
        _find_run(stage_by_id(ledger, record["stage"]), record["run"])
    for stage_id, info in lease["stages"].items():
        stage = stage_by_id(ledger, stage_id)
        if info.get("epochs") and stage["epochs"] not in (None, info["epochs"]):
            raise LedgerError(
                f"stage {stage_id}: the lease trained {info['epochs']} epochs, the ledger has fixed "
                f"{stage['epochs']}: it ran from another ledger; do not merge it"
            )
    return exports


def _result(record: Mapping[str, Any], lease: Mapping[str, Any]) -> dict[str, Any]:
    results = record["results"]
    return {
        "lease": lease["lease"],
        "epochs": record["epochs_planned"],
        "full_epochs": record["full_epochs"],
        "shortened": record["shortened"],
        "concurrency": record["concurrency"],
        "epoch_s": record["epoch_s"],
        "wall_s": record["wall_s"],
        **{key: results.get(key) for key in RESULT_KEYS},
        "command": record["command"],
        "curve_val_acc1": record.get("curve_val_acc1", []),
    }


def _install_weights(root: Path, folder: Path, export: Mapping[str, Any]) -> None:
    """Copies the weights into place with their model card (``.json``, and ``.md`` rendered from it)."""
    from sdd_lightning.cli.export import render_markdown  # imports torch: only when there are weights

    destination = root / export["destination"]
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / export["file"], destination)
    card = export["card"]
    destination.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    destination.with_suffix(".md").write_text(render_markdown(card))


def write_tables(ledger: Mapping[str, Any], root: Path, doc: Path | None) -> list[Path]:
    """Regenerates the tables of ``doc`` and the README of every weights folder; returns the files written."""
    written = []
    if doc is not None:
        doc.write_text(replace_between_markers(doc.read_text(), render_tables(ledger), str(doc)))
        written.append(doc)
    folders = sorted({str(Path(s["export"]["weights"]).parent) for s in ledger["stages"] if s["export"]})
    for folder in folders:
        readme = root / folder / "README.md"
        readme.parent.mkdir(parents=True, exist_ok=True)
        readme.write_text(render_weights_readme(ledger, folder))
        written.append(readme)
    return written


def merge_lease(ledger_path: Path, folder: Path, root: Path, doc: Path | None) -> list[str]:
    """Merges the lease whose files lie in ``folder``; returns what changed, one line each."""
    ledger = load_ledger(ledger_path)
    lease = _read_lease(folder)
    if any(entry["lease"] == lease["lease"] for entry in ledger["leases"]):
        return [f"lease {lease['lease']} is merged already; nothing changed"]
    exports = _check(ledger, lease, folder)
    changes = []
    for stage_id, export in exports.items():
        stage = stage_by_id(ledger, stage_id)
        if stage["status"] == "done":  # two leases from the same ledger trained it: the first merged is kept
            changes.append(f"weights of stage {stage_id}: installed already (lease {stage['weights']['lease']})")
            continue
        _install_weights(root, folder, export)
        accuracy = export["card"].get("accuracy") or {}
        stage["weights"] = {
            "path": export["destination"],
            "sha256": export["sha256"],
            "bytes": export["bytes"],
            "acc1": accuracy.get("acc1"),
            "acc5": accuracy.get("acc5"),
            "lease": lease["lease"],
            "run": export["run"],
        }
        changes.append(
            f"weights {export['destination']} ({export['bytes'] / 2**20:.2f} MiB, sha256 {export['sha256'][:12]}...)"
        )
    for record in lease["runs"]:
        stage = stage_by_id(ledger, record["stage"])
        run = _find_run(stage, record["run"])
        if run["status"] == "done":  # two leases from the same ledger ran it: the first merged is kept
            changes.append(f"run {run['id']}: done already (lease {run['result']['lease']}); this lease's is left out")
        elif record["status"] == "finished" and (not stage["export"] or stage["id"] in exports):
            run["status"], run["result"] = "done", _result(record, lease)
            info = lease["stages"][stage["id"]]
            stage["epochs"] = info["epochs"]
            stage["full_epochs"], stage["milestones"] = info["full_epochs"], info["milestones"]
            changes.append(f"run {run['id']}: done, best top-1 {100 * record['results']['val/acc1_best']:.2f} %")
        else:
            reason = record.get("reason") or "finished, but its weights did not come back"
            run["attempts"].append(
                {
                    "lease": lease["lease"],
                    "status": record["status"],
                    "epochs_planned": record["epochs_planned"],
                    "epochs_done": record.get("epochs_done"),
                    "reason": reason,
                    "device": lease["device"],
                }
            )
            changes.append(f"run {run['id']}: {record['status']} ({reason}); stays pending, not reported")
    device_measurements = ledger["measurements"].setdefault(lease["device"], {})
    for stage_id, measured in lease["measurements"].items():
        device_measurements[stage_id] = {**device_measurements.get(stage_id, {}), **measured}
    ledger["leases"].append(
        {
            "lease": lease["lease"],
            "device": lease["device"],
            "started": lease["started"],
            "budget_s": lease["budget_s"],
            "elapsed_s": lease.get("elapsed_s"),
            "stopped": lease.get("stopped"),
            "git_commit": lease.get("git_commit"),
            "waves": lease["waves"],
            "probes": lease.get("probes", []),
            "exports": [{k: e[k] for k in ("file", "destination", "sha256", "export_s")} for e in lease["exports"]],
        }
    )
    save_ledger(ledger, ledger_path)
    written = write_tables(ledger, root, doc)
    changes.append(f"lease {lease['lease']} merged; wrote {ledger_path} and " + ", ".join(map(str, written)))
    return changes
