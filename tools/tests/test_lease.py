"""tools/gpu_lease.py: the ledger, the lease runner and the merge, rehearsed on CPU with the built-in data.

The rehearsal runs the real command line on a tiny ledger (a teacher stage, then a student stage with KD and
SD-KD; tiny networks, 256 synthetic images): ``next`` writes the files that come back within the device tool's
limits, ``merge`` puts them into the ledger, ``weights/`` and the docs table (all copies under tmp_path), and the
second ``next`` goes on with the following stage, probing it at concurrency 1 and 2 and training its two runs at
once. Another lease stops a run at its budget and checks that nothing of it is reported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from campaign.ledger import LedgerError, load_ledger, save_ledger
from campaign.merge import merge_lease
from campaign.outbox import check_out_dir
from campaign.report import BEGIN, END, render_tables, render_weights_readme
from campaign.runner import device_key
from campaign.schedule import decide_wave, paying_concurrency, scaled_milestones

from sdd_lightning.catalog import setting_overrides

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_lease.py"
MiB = 2**20

TINY_PLAN = {
    "overrides": [
        "data=synthetic",
        "data.num_train=256",
        "data.num_val=128",
        "trainer=cpu",
        "callbacks=quiet",
        "logger=csv",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
    ],
    "full_epochs": 2,
    "milestones": None,
    "pack_s": 5,
    "export_s": 30,
    "epoch_overhead_s": 0.0,
    "tail_overhead_s": 3,
    "min_epochs": 1,
    # min_gain -1: always the most processes measured; on 2 shared cores concurrency pays nothing, and the rehearsal
    # is to exercise the concurrent path
    "probe": {
        "min_gain": -1.0,
        "warmup_steps": 1,
        "steps": 1,
        "val_batches": 1,
        "concurrency": [1, 2],
        "timeout_s": 120,
        "barrier_timeout_s": 60,
    },
}
TEACHER_WEIGHTS = "weights/synthetic/tiny_cnn-synthetic-fp16.safetensors"


def tiny_ledger(root: Path, measurements: dict | None = None) -> Path:
    """A two-stage ledger (teacher, then KD and SD-KD students) with a docs page, under ``root``."""
    ledger = {
        "format": "sdd-lightning reproduction ledger",
        "format_version": 1,
        "title": "rehearsal",
        "plan": TINY_PLAN,
        "stages": [
            {
                "id": "teacher",
                "title": "tiny_cnn teacher",
                "seeds": [0],
                "overrides": ["student.arch=tiny_cnn"],
                "settings": [{"setting": "quickstart/teacher", "label": "tiny_cnn teacher"}],
                "export": {"weights": TEACHER_WEIGHTS, "arch": "tiny_cnn", "num_classes": 16},
                "recipe": "The quickstart teacher's recipe, tiny_cnn instead of small_cnn.",
            },
            {
                "id": "students",
                "title": "tiny_cnn -> tiny_cnn",
                "seeds": [0],
                "overrides": ["teacher.arch=tiny_cnn"],
                "settings": [
                    {"setting": "quickstart/kd", "label": "tiny -> tiny, KD"},
                    {"setting": "quickstart/sd_kd", "label": "tiny -> tiny, SD-KD"},
                ],
                "teacher_from": "teacher",
            },
        ],
        "measurements": measurements or {},
    }
    (root / "reproduction").mkdir(parents=True)
    path = root / "reproduction" / "ledger.json"
    path.write_text(json.dumps(ledger, indent=2))
    (root / "docs").mkdir()
    (root / "docs" / "reproduction.md").write_text(f"# Reproduction\n\n{BEGIN}\n{END}\n\nThe rest of the page.\n")
    return path


def gpu_lease(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    found = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True, env=env, timeout=400
    )
    assert found.returncode == 0, found.stdout[-3000:] + found.stderr[-3000:]
    return found


def assert_within_device_limits(out: Path) -> None:
    """What the device tool brings back: 8 files, 16 MiB each, 64 MiB in all, plain names, 2 folders down."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8
    assert all(p.stat().st_size <= 16 * MiB for p in files)
    assert sum(p.stat().st_size for p in files) <= 64 * MiB
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for p in out.rglob("*") for part in p.relative_to(out).parts)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert not [p for p in out.rglob("*") if p.is_symlink()]


# 75 s of two full lease cycles: the rehearsal before a GPU lease (`make test-all`), not part of the default suite
@pytest.mark.slow
def test_lease_cycle_on_cpu(tmp_path):
    """next -> merge -> next -> merge on a tiny ledger: teacher exported and installed, then both students."""
    # the teacher stage's times are known (as after an earlier lease), so the first lease goes straight to it
    known = {"1": {"k": 1, "epoch_s": 1.0, "startup_s": 10.0, "tail_s": 5.0, "source": "probe"}}
    ledger_path = tiny_ledger(tmp_path, {device_key(): {"teacher": known}})
    doc = tmp_path / "docs" / "reproduction.md"

    # lease 1: the teacher, exported as fp16 into $OUT
    first = gpu_lease(
        tmp_path,
        "next",
        "--budget-s",
        "150",
        "--out",
        str(tmp_path / "out1"),
        "--work",
        str(tmp_path / "work1"),
        "--max-stages",
        "1",
    )
    out1 = tmp_path / "out1"
    assert_within_device_limits(out1)
    assert sorted(p.name for p in out1.iterdir()) == [
        "lease.json",
        "logs.tar.xz",
        "tiny_cnn-synthetic-fp16.safetensors",
    ]
    lease1 = json.loads((out1 / "lease.json").read_text())
    assert [r["status"] for r in lease1["runs"]] == ["finished"], first.stdout
    assert lease1["stopped"] == "--max-stages 1 reached"
    assert "probes" not in lease1  # the ledger's measurement was used
    card = lease1["exports"][0]["card"]
    assert [f["path"] for f in card["files"]] == ["tiny_cnn-synthetic-fp16.safetensors"]
    assert 0.0 <= card["accuracy"]["acc1"] <= 1.0

    merged = gpu_lease(tmp_path, "merge", str(out1)).stdout
    assert "run teacher-teacher-s0: done" in merged
    ledger = load_ledger(ledger_path)
    teacher, students = ledger["stages"]
    assert teacher["status"] == "done" and students["status"] == "pending"
    assert teacher["epochs"] == 2 and teacher["weights"]["path"] == TEACHER_WEIGHTS
    weights = tmp_path / TEACHER_WEIGHTS
    from sdd_lightning.models import build_model, load_weights
    from sdd_lightning.reporting.model_card import read_model_card

    assert read_model_card(weights)["architecture"]["arch"] == "tiny_cnn"
    load_weights(build_model("tiny_cnn", 16), weights)
    readme = (weights.parent / "README.md").read_text()
    assert teacher["weights"]["sha256"] in readme and "student.arch=tiny_cnn" in readme
    best = 100 * teacher["runs"][0]["result"]["val/acc1_best"]
    table = doc.read_text()
    assert f"| tiny_cnn teacher |  | {best:.2f} |" in table and table.endswith("The rest of the page.\n")
    assert "| tiny -> tiny, KD |  |  |  | 0 of 1 |" in table
    assert "merged already" in merge_lease(ledger_path, out1, tmp_path, doc)[0]  # merging twice changes nothing

    # lease 2: the following stage, probed at 1 and 2 processes, its two runs trained at once
    gpu_lease(tmp_path, "next", "--budget-s", "150", "--out", str(tmp_path / "out2"), "--work", str(tmp_path / "work2"))
    out2 = tmp_path / "out2"
    assert_within_device_limits(out2)
    lease2 = json.loads((out2 / "lease.json").read_text())
    assert lease2["probes"][0]["stage"] == "students" and lease2["probes"][0]["phases"] == [1, 2]
    assert set(lease2["measurements"]["students"]) >= {"1", "2"}
    assert [(w["stage"], w["concurrency"]) for w in lease2["waves"]] == [("students", 2)]
    assert {r["run"]: r["status"] for r in lease2["runs"]} == {
        "students-kd-s0": "finished",
        "students-sd_kd-s0": "finished",
    }
    assert all(r["command"][-1] == f"teacher.checkpoint={TEACHER_WEIGHTS}" for r in lease2["runs"])
    assert lease2["stopped"] == "every stage of the ledger is done"

    merge_lease(ledger_path, out2, tmp_path, doc)
    ledger = load_ledger(ledger_path)
    assert [s["status"] for s in ledger["stages"]] == ["done", "done"]
    assert len(ledger["leases"]) == 2 and device_key() in ledger["measurements"]
    table = doc.read_text()
    for run in ledger["stages"][1]["runs"]:
        assert run["result"]["concurrency"] == 2 and len(run["result"]["curve_val_acc1"]) == 2
        label = "tiny -> tiny, KD" if run["setting"].endswith("/kd") else "tiny -> tiny, SD-KD"
        assert f"| {label} |  | {100 * run['result']['val/acc1_best']:.2f} |" in table


def test_a_run_stopped_at_the_budget_is_never_reported(tmp_path):
    """A run that outlasts the lease is stopped, recorded as an attempt, and left out of the table."""
    plan = TINY_PLAN | {"full_epochs": 500}
    optimistic = {"1": {"k": 1, "epoch_s": 0.001, "startup_s": 1.0, "tail_s": 1.0, "source": "probe"}}
    ledger_path = tiny_ledger(tmp_path, {device_key(): {"teacher": optimistic}})
    ledger = json.loads(ledger_path.read_text())
    ledger["plan"] = plan
    ledger_path.write_text(json.dumps(ledger))

    gpu_lease(tmp_path, "next", "--budget-s", "45", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    out = tmp_path / "out"
    assert_within_device_limits(out)
    lease = json.loads((out / "lease.json").read_text())
    (run,) = lease["runs"]
    assert run["status"] == "killed" and "results" not in run
    assert lease["exports"] == [] and not (out / "tiny_cnn-synthetic-fp16.safetensors").exists()

    merge_lease(ledger_path, out, tmp_path, tmp_path / "docs" / "reproduction.md")
    ledger = load_ledger(ledger_path)
    teacher = ledger["stages"][0]
    assert teacher["status"] == "pending" and teacher["epochs"] is None and teacher["weights"] is None
    assert teacher["runs"][0]["result"] is None
    assert teacher["runs"][0]["attempts"][0]["status"] == "killed"
    table = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "| tiny_cnn teacher |  |  |  | 0 of 1 |  |  |  |" in table
    assert "pending (1 unfinished attempt)" in table


# ------------------------------------------------------------------------------------------------- units


def test_the_project_ledger_holds_the_campaign_in_order():
    ledger = load_ledger(ROOT / "reproduction" / "ledger.json")
    assert [s["id"] for s in ledger["stages"]][:6] == [
        "cifar100-teacher-resnet32x4",
        "cifar100-res32x4-res8x4",
        "cifar100-res32x4-shv1",
        "cifar100-teacher-wrn40-2",
        "cifar100-wrn40-2-shv1",
        "cifar100-wrn40-2-vgg8",
    ]
    ls = next(s for s in ledger["stages"] if s["id"] == "cifar100-res32x4-res8x4-ls")  # after the SDD stages
    assert ledger["stages"].index(ls) > 8 and ls["teacher_from"] == "cifar100-teacher-resnet32x4"
    assert [e["setting"] for e in ls["settings"]] == [
        "cifar100/ls/res32x4_res8x4/kd_ls",
        "cifar100/ls/res32x4_res8x4/sd_kd_ls",
    ]
    for stage in ledger["stages"]:
        for entry in stage["settings"]:
            setting_overrides(entry["setting"])  # every setting composes
        if not stage["export"]:
            assert stage["seeds"] == [0, 1, 2] and stage["overrides"] == []  # students: the official recipe
    assert ledger["stages"][0]["export"]["weights"].startswith("weights/cifar100/")


def test_generated_pages_match_the_ledger():
    """docs/reproduction.md and weights/cifar100/README.md are what `gpu_lease.py table` writes."""
    ledger = load_ledger(ROOT / "reproduction" / "ledger.json")
    doc = (ROOT / "docs" / "reproduction.md").read_text()
    assert doc.split(BEGIN)[1].split(END)[0] == "\n" + render_tables(ledger)
    readme = (ROOT / "weights" / "cifar100" / "README.md").read_text()
    assert readme == render_weights_readme(ledger, "weights/cifar100")


def test_shortened_schedules_keep_their_milestones_in_proportion():
    assert scaled_milestones(240, [150, 180, 210], 240) == [150, 180, 210]
    assert scaled_milestones(60, [150, 180, 210], 240) == [38, 45, 52]
    assert scaled_milestones(2, [150, 180, 210], 240) == [1, 2, 2]


PLAN = {"full_epochs": 240, "safety": 1.0, "min_epochs": 10, "min_start_fraction": 0.5, "probe": {"min_gain": 0.1}}


def m(k: int, epoch_s: float) -> dict:
    return {"k": k, "epoch_s": epoch_s, "startup_s": 20.0, "tail_s": 10.0}


def test_concurrency_is_raised_while_it_pays():
    measured = {"1": m(1, 5.0), "2": m(2, 6.0), "4": m(4, 11.5)}  # throughput 0.2, 0.33, 0.35 runs x epochs / s
    assert paying_concurrency(measured, 0.1, at_most=6) == 2
    assert paying_concurrency(measured, 0.01, at_most=6) == 4
    assert paying_concurrency(measured, 0.01, at_most=3) == 2


def test_a_new_stage_is_shortened_to_fit_and_later_waves_keep_its_epochs():
    measured = {"1": m(1, 5.0), "2": m(2, 6.0)}
    wave = decide_wave(fixed_epochs=None, pending=6, measurements=measured, remaining_s=500, capacity_s=500, plan=PLAN)
    assert (wave.runs, wave.epochs) == (2, 78)  # (500 - 30) / 6 s per epoch
    assert wave.predicted_s <= 500
    # a later lease: the stage's epochs stay; as many runs as fit go at once (2 measured, so at most 2)
    later = decide_wave(fixed_epochs=78, pending=4, measurements=measured, remaining_s=500, capacity_s=500, plan=PLAN)
    assert (later.runs, later.epochs) == (2, 78)
    alone = decide_wave(fixed_epochs=78, pending=4, measurements=measured, remaining_s=430, capacity_s=500, plan=PLAN)
    assert (alone.runs, alone.epochs) == (1, 78)  # 2 at once need 498 s, 1 alone 420 s
    none = decide_wave(fixed_epochs=78, pending=4, measurements=measured, remaining_s=300, capacity_s=500, plan=PLAN)
    assert none.runs == 0 and "needs 420 s" in none.reason


def test_a_new_stage_waits_for_a_lease_with_room():
    measured = {"1": m(1, 5.0)}
    late = decide_wave(fixed_epochs=None, pending=1, measurements=measured, remaining_s=200, capacity_s=500, plan=PLAN)
    assert late.runs == 0 and "at least 50%" in late.reason
    fits = decide_wave(
        fixed_epochs=None, pending=1, measurements={"1": m(1, 0.5)}, remaining_s=200, capacity_s=500, plan=PLAN
    )
    assert (fits.runs, fits.epochs) == (1, 240)  # the full schedule fits: no need to wait
    tiny = decide_wave(
        fixed_epochs=None, pending=1, measurements={"1": m(1, 40.0)}, remaining_s=400, capacity_s=500, plan=PLAN
    )
    assert tiny.runs == 0 and "only 9 epochs" in tiny.reason


def test_out_checker_names_each_broken_limit(tmp_path):
    assert check_out_dir(tmp_path) == []
    (tmp_path / "big.bin").write_bytes(b"")
    os.truncate(tmp_path / "big.bin", 16 * MiB + 1)
    (tmp_path / "bad name.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    for index in range(6):
        (tmp_path / f"f{index}").write_text("x")
    problems = "\n".join(check_out_dir(tmp_path))
    assert "big.bin: 16.0 MiB is over 16 MiB" in problems
    assert "bad name.txt: names may hold" in problems
    assert "more than 2 folders down" in problems
    assert "9 files: at most 8" in problems


def test_ledger_errors_name_the_field(tmp_path):
    path = tiny_ledger(tmp_path)
    ledger = json.loads(path.read_text())
    ledger["stages"].reverse()  # the students now come before their teacher
    path.write_text(json.dumps(ledger))
    with pytest.raises(LedgerError, match="teacher_from='teacher' must name an earlier stage"):
        load_ledger(path)
    ledger["stages"].reverse()
    ledger["stages"][1]["id"] = "teacher"
    path.write_text(json.dumps(ledger))
    with pytest.raises(LedgerError, match="the id is used twice"):
        load_ledger(path)


def test_merge_refuses_damaged_weights_and_changes_nothing(tmp_path):
    path = tiny_ledger(tmp_path)
    save_ledger(load_ledger(path), path)
    before = path.read_text()
    back = tmp_path / "back"
    back.mkdir()
    (back / "t.safetensors").write_bytes(b"not the file that was exported")
    lease = {
        "format": "sdd-lightning lease record",
        "lease": "L1",
        "device": "cpu",
        "started": "",
        "budget_s": 1,
        "exports": [
            {
                "stage": "teacher",
                "run": "teacher-teacher-s0",
                "file": "t.safetensors",
                "sha256": "0" * 64,
                "destination": TEACHER_WEIGHTS,
                "bytes": 1,
                "card": {},
                "export_s": 1,
            }
        ],
        "runs": [],
        "stages": {},
        "measurements": {},
        "waves": [],
    }
    (back / "lease.json").write_text(json.dumps(lease))
    with pytest.raises(LedgerError, match="damaged on the way"):
        merge_lease(path, back, tmp_path, tmp_path / "docs" / "reproduction.md")
    assert path.read_text() == before and not (tmp_path / TEACHER_WEIGHTS).exists()


def test_status_names_what_the_next_lease_runs(tmp_path):
    known = {"1": {"k": 1, "epoch_s": 1.0, "startup_s": 10.0, "tail_s": 5.0, "source": "probe"}}
    tiny_ledger(tmp_path, {"NVIDIA H200": {"teacher": known}})
    shown = gpu_lease(tmp_path, "status", "--budget-s", "150").stdout
    assert "next: stage teacher (tiny_cnn teacher), 1 run(s) pending" in shown
    # 150 s less pack_s and export_s leave 115 s: 10 s start-up, 5 s tail, 2 epochs of 1.1 s
    assert "on NVIDIA H200, with --budget-s 150: 1 run(s) at once, 2 epochs, about 17 s" in shown
