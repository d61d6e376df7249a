"""`make train` in a test-sized budget: teacher, KD and SD-KD runs, and the printed comparison table."""

from __future__ import annotations

import json

from sdd_lightning import quickstart


def test_quickstart_runs_three_steps_and_prints_the_table(tmp_path, capsys):
    budget = ["epochs=1", "data.num_train=256", "data.num_val=128", "callbacks=quiet", "trainer.num_sanity_val_steps=0"]
    results = quickstart.main(["--out", str(tmp_path), *budget])
    assert set(results) == {"teacher", "kd", "sd_kd"}
    for step in results:
        on_disk = json.loads((tmp_path / step / "results.json").read_text())
        assert on_disk["status"] == "finished" and on_disk["epochs"] == 1
    assert results["kd"]["distill"] == "kd" and results["sd_kd"]["distill"] == "sd_kd"
    # both students were distilled from the teacher trained in step 1
    assert results["kd"]["teacher/acc1"] == results["sd_kd"]["teacher/acc1"]
    out = capsys.readouterr().out
    assert "| teacher (small_cnn) |" in out and "| SD-KD student (tiny_cnn) |" in out
    assert ("SD-KD beats KD" in out) != ("SD-KD does not beat KD" in out)
    assert (tmp_path / "summary.md").is_file()
