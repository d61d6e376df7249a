"""`make train` in a test-sized budget: the teacher run, one sweep of both students, and the printed table."""

from __future__ import annotations

import json

from sdd_lightning.cli import quickstart


def test_quickstart_runs_the_teacher_and_a_student_sweep_and_prints_the_table(tmp_path, capsys):
    budget = ["epochs=1", "data.num_train=256", "data.num_val=128", "callbacks=quiet", "trainer.num_sanity_val_steps=0"]
    assert quickstart.main(["--out", str(tmp_path), "--seeds", "0,1", *budget]) == 0
    teacher = json.loads((tmp_path / "teacher" / "results.json").read_text())
    assert teacher["status"] == "finished" and teacher["epochs"] == 1 and teacher["distill"] == "none"
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "students").glob("*/results.json"))]
    # one sweep: both methods over both seeds, each job distilled from the teacher trained in step 1
    assert sorted((r["distill"], r["seed"]) for r in jobs) == [("kd", 0), ("kd", 1), ("sd_kd", 0), ("sd_kd", 1)]
    assert all(r["status"] == "finished" and r["epochs"] == 1 for r in jobs)
    assert {r["teacher/acc1"] for r in jobs} == {teacher["val/acc1_best"]}
    out = capsys.readouterr().out
    assert "| teacher (small_cnn) | 0 |" in out and "| SD-KD student (tiny_cnn, M = {1, 2, 4}) | 0,1 |" in out
    kd = [100 * r["val/acc1_best"] for r in jobs if r["distill"] == "kd"]
    assert f"| {sum(kd) / 2:.2f} ± " in out  # the mean over the two seeds, with its spread
    assert "SD-KD - KD (best top-1), per seed:" in out
    # the table has a file of its own: sdd-summary's summary.md in the same folder is left alone
    assert (tmp_path / "quickstart.md").read_text().startswith("| model | seeds |")
    assert not (tmp_path / "summary.md").exists()


def test_a_failing_step_ends_the_quickstart_with_a_short_message(tmp_path, capsys):
    assert quickstart.main(["--out", str(tmp_path), "epochs=0"]) == 1
    assert "sdd-quickstart: sdd-train experiment=quickstart/teacher" in capsys.readouterr().err
