"""sdd-summary on hand-made run folders: the numbers of each row, what is grouped, what is left out, figures."""

from __future__ import annotations

import csv
import errno
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.app import subprocess_env

from sdd_lightning.cli.summary import main
from sdd_lightning.errors import SummaryError
from sdd_lightning.reporting.summary import MARKER, PRESENTATION_OVERRIDES, collect, read_curve, summarize

SD_KD = "cifar100/res32x4_shv1/sd_kd"
KD = "cifar100/res32x4_shv1/kd"


def write_run(
    folder: Path,
    *,
    seed: int,
    setting: str | None = SD_KD,
    best: float = 0.75,
    last: float = 0.74,
    best5: float = 0.93,
    last5: float = 0.92,
    status: str = "finished",
    overrides: tuple[str, ...] = (),
    published: float | None = 76.3,
    published_top5: float | None = None,
    epochs: int = 4,
    curve: bool = True,
) -> Path:
    """A run folder as sdd-train leaves it: results.json, config_resolved.yaml and (optionally) csv/metrics.csv."""
    folder.mkdir(parents=True)
    results = {
        "val/acc1": last,
        "val/acc1_best": best,
        "val/acc5": last5,
        "val/acc5_best": best5,
        "test/acc1": best,
        "test/acc5": best5,
        "teacher/acc1": 0.79,
        "status": status,
        "seed": seed,
        "epochs": epochs,
        "global_step": 100 * epochs,
        "wall_time_s": 12.5,
        "overrides": [*overrides, f"seed={seed}"],
        "experiment": None,
        "setting": setting,
        "data": "CIFAR100DataModule",
        "distill": setting.rsplit("/", 1)[-1] if setting else "sd_kd",
        "student": "ShuffleV1",
        "teacher": "resnet32x4",
        "published": published,
        **({"published_top5": published_top5} if published_top5 is not None else {}),
        "published_metric": "best",
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump({"seed": seed, "epochs": epochs}))
    if curve:
        write_curve(folder, [best - 0.1 + 0.1 * e / (epochs - 1) for e in range(epochs)])
    return folder


def write_curve(folder: Path, val_acc1: list[float]) -> None:
    """A CSVLogger metrics.csv: a training row and a validation row per epoch."""
    (folder / "csv").mkdir(parents=True, exist_ok=True)
    with (folder / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss_epoch", "val/acc1", "val/acc5"])
        for epoch, value in enumerate(val_acc1):
            writer.writerow([epoch, 10 * epoch + 9, 2.0 - epoch / 10, "", ""])
            writer.writerow([epoch, 10 * epoch + 9, "", value, min(1.0, value + 0.2)])


def write_unfinished(folder: Path, *, seed: int, overrides: list[str], config: dict | None = None) -> Path:
    """A run that is still going or died: config and Hydra's record, a last.ckpt, no results.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump({"seed": seed, "published": 76.3, **(config or {})}))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    return folder


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """SD-KD: three finished seeds, one interrupted, one failed, one without results.json; KD: two seeds."""
    root = tmp_path / "sweep"
    base = ("pair=cifar100/res32x4_shv1", "distill=sd_kd", "data.root=/data")
    write_run(root / "0", seed=0, best=0.70, last=0.69, best5=0.90, last5=0.88, overrides=base)
    # presentation-only overrides differ between seeds: still the same setting
    write_run(
        root / "1",
        seed=1,
        best=0.72,
        last=0.70,
        best5=0.91,
        last5=0.89,
        overrides=(*base, "callbacks=quiet", "logger=wandb", "trainer.enable_progress_bar=false"),
    )
    write_run(root / "2", seed=2, best=0.74, last=0.71, best5=0.92, last5=0.90, overrides=(*base, "+logger.csv.name=x"))
    write_run(root / "3", seed=3, best=0.10, last=0.10, status="interrupted", overrides=base)
    write_run(root / "4", seed=4, best=0.01, last=0.01, status="failed", overrides=base)
    write_unfinished(root / "5", seed=5, overrides=list(base))
    # a computed override makes another setting
    write_run(root / "beta4-0", seed=0, best=0.80, last=0.79, overrides=(*base, "distill.beta=4.0"))
    write_run(root / "kd-0", seed=0, setting=KD, best=0.60, last=0.58, published=74.07, curve=False)
    write_run(root / "kd-1", seed=1, setting=KD, best=0.62, last=0.60, published=74.07, curve=False)
    return root


def test_rows_give_best_and_last_mean_std_over_finished_seeds_only(sweep):
    rows = {row.setting: row for row in summarize(collect(sweep))}
    sd_kd = rows[SD_KD]
    assert sd_kd.n == 3 and sd_kd.seeds == [0, 1, 2]
    for key, values in {
        "val/acc1_best": [70, 72, 74],
        "val/acc1": [69, 70, 71],
        "val/acc5_best": [90, 91, 92],
        "val/acc5": [88, 89, 90],
    }.items():
        mean, std, n = sd_kd.stats(key)
        assert mean == pytest.approx(statistics.fmean(values)) and n == 3
        assert std == pytest.approx(statistics.stdev(values))  # sample standard deviation, n - 1
    assert sd_kd.stats("val/acc1_best")[:2] == pytest.approx((72.0, 2.0))
    assert sd_kd.difference() == pytest.approx(72.0 - 76.3)  # the paper reports the best epoch
    assert sorted((r.seed, r.status) for r in sd_kd.others) == [(3, "interrupted"), (4, "failed"), (5, "unfinished")]
    assert rows[KD].stats("val/acc1")[:2] == pytest.approx((59.0, statistics.stdev([58, 60])))
    assert rows[f"{SD_KD} distill.beta=4.0"].n == 1


def test_table_csv_warnings_and_figures(sweep, capsys):
    assert main([str(sweep)]) == 0
    out, err = capsys.readouterr()
    marker, table = (sweep / "summary.md").read_text().split("\n", 1)
    assert marker == MARKER and table in out
    sd_kd_line = next(line for line in table.splitlines() if line.startswith(f"| {SD_KD} |"))
    cells = [c.strip() for c in sd_kd_line.strip("|").split("|")]
    assert cells[1:9] == [
        "3",
        "0,1,2",
        "72.00 ± 2.00",
        "70.00 ± 1.00",
        "91.00 ± 1.00",
        "89.00 ± 1.00",
        "76.30 (best epoch)",
        "-4.30",
    ]
    assert cells[9] == ""  # no published top-5 for this setting
    assert cells[11] == "3: seed 3 interrupted, seed 4 failed, seed 5 unfinished"
    # n < 3 warns, n = 3 does not; one-seed rows show no spread
    assert f"{KD}: n=2 < 3 seeds: the spread is not reliable; run seed=0,1,2" in err
    assert f"{SD_KD}: n=3" not in err
    assert "80.00 ± n/a" in table
    with (sweep / "summary.csv").open() as f:
        records = {r["setting"]: r for r in csv.DictReader(f)}
    assert float(records[SD_KD]["best_top1_std"]) == pytest.approx(2.0)
    assert float(records[KD]["last_top1_mean"]) == pytest.approx(59.0)
    assert records[SD_KD]["published_metric"] == "best" and records[SD_KD]["seeds"] == "0 1 2"
    for name in ("summary_bars.png", "summary_curves.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "9 runs; written to" in out


def test_a_published_top5_is_shown_and_compared_where_the_paper_gives_one(tmp_path):
    # ResNet50 -> MobileNetV1 SD-DKD on ImageNet: 73.08 / 91.09 (conf/published.yaml)
    setting = "imagenet/res50_mv1/sd_dkd"
    for seed, best5 in ((0, 0.91), (1, 0.92)):
        write_run(tmp_path / f"r{seed}", seed=seed, setting=setting, best5=best5, published=73.08, published_top5=91.09)
    (row,) = summarize(collect(tmp_path))
    assert row.published_top5 == 91.09 and row.difference_top5() == pytest.approx(91.5 - 91.09)
    assert main([str(tmp_path)]) == 0
    table = (tmp_path / "summary.md").read_text().splitlines()
    header = [c.strip() for c in next(line for line in table if line.startswith("| setting")).strip("|").split("|")]
    cells = [c.strip() for c in next(line for line in table if line.startswith(f"| {setting}")).strip("|").split("|")]
    assert dict(zip(header, cells, strict=True))["published top-5 (%)"] == "91.09 (best epoch)"
    with (tmp_path / "summary.csv").open() as f:
        (record,) = csv.DictReader(f)
    assert float(record["published_top5"]) == 91.09
    assert float(record["ours_minus_published_top5"]) == pytest.approx(0.41)


PRESENTATION = ["callbacks=quiet", "callbacks.checkpoint.every_n_epochs=5", "logger=[csv,wandb]", "+logger.x=1"]
PRESENTATION += ["hydra.run.dir=/x", "data.root=/x", "teacher.checkpoint=/x.pth", "ckpt_path=/x.ckpt"]
PRESENTATION += ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5", "data.num_workers=2"]
PRESENTATION += ["data.pin_memory=false", "experiment=cifar100/res32x4_shv1_sd_kd", "pair=x", "distill=sd_kd"]


@pytest.mark.parametrize("override", PRESENTATION)
def test_presentation_overrides_keep_runs_in_one_setting(tmp_path, override):
    assert any(override.lstrip("+").startswith(entry) for entry in PRESENTATION_OVERRIDES)
    write_run(tmp_path / "a", seed=0, overrides=("epochs=2",))
    write_run(tmp_path / "b", seed=1, overrides=("epochs=2", override))
    assert [(r.setting, r.n) for r in summarize(collect(tmp_path))] == [(f"{SD_KD} epochs=2", 2)]


@pytest.mark.parametrize("override", ["distill.beta=4", "epochs=3", "trainer=gpu", "data.batch_size=32", "seed_x=1"])
def test_computed_overrides_make_another_setting(tmp_path, override):
    write_run(tmp_path / "a", seed=0)
    write_run(tmp_path / "b", seed=1, overrides=(override,))
    assert [r.setting for r in summarize(collect(tmp_path))] == [SD_KD, f"{SD_KD} {override}"]


def test_ad_hoc_runs_fall_back_to_data_pair_and_method(tmp_path):
    write_run(tmp_path / "a", seed=0, setting=None, overrides=("distill=sd_kd", "epochs=2"))
    write_run(tmp_path / "b", seed=1, setting=None, overrides=("distill=sd_kd", "epochs=2", "callbacks=quiet"))
    write_run(tmp_path / "c", seed=0, setting=None, overrides=("distill=sd_kd", "epochs=3"))
    rows = summarize(collect(tmp_path))
    assert [(r.setting, r.n) for r in rows] == [
        ("CIFAR100DataModule: resnet32x4 -> ShuffleV1 (sd_kd) epochs=2", 2),
        ("CIFAR100DataModule: resnet32x4 -> ShuffleV1 (sd_kd) epochs=3", 1),
    ]


def test_a_run_without_results_json_is_named_from_its_own_record(tmp_path):
    """Alone in its folder (no finished run of its sweep), the setting comes from the config or Hydra's choices."""
    write_unfinished(tmp_path / "a", seed=0, overrides=["pair=cifar100/res32x4_shv1"], config={"setting": SD_KD})
    folder = write_unfinished(tmp_path / "b", seed=0, overrides=["experiment=cifar100/res32x4_shv1_kd"])
    choices = {"experiment": "cifar100/res32x4_shv1_kd", "distill": "kd"}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    rows = summarize(collect(tmp_path))
    assert [(r.setting, r.n, len(r.others)) for r in rows] == [
        ("cifar100/res32x4_shv1/sd_kd", 0, 1),
        ("cifar100/res32x4_shv1_kd", 0, 1),
    ]


def test_curves_skip_training_rows_and_keep_the_last_value_of_a_repeated_epoch(tmp_path):
    write_curve(tmp_path, [0.1, 0.2, 0.3])
    with (tmp_path / "csv" / "metrics.csv").open("a", newline="") as f:
        csv.writer(f).writerow([2, 99, "", 0.35, ""])  # epoch 2 again, after a resume
    epochs, values = zip(*read_curve(tmp_path), strict=True)
    assert epochs == (1, 2, 3) and values == pytest.approx((10.0, 20.0, 35.0))
    assert read_curve(tmp_path / "no-logger") == []


def test_without_matplotlib_the_figures_are_skipped_with_a_notice(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    main([str(sweep), "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert "matplotlib is not installed" in err
    assert (tmp_path / "out" / "summary.md").is_file() and not list((tmp_path / "out").glob("*.png"))


def test_bad_folders_are_refused_by_name(tmp_path, capsys, monkeypatch):
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no run folder" in err and len(err.splitlines()) == 2
    monkeypatch.setenv("SDD_DEBUG", "1")  # the traceback instead
    with pytest.raises(SummaryError, match="no run folder"):
        main([str(tmp_path)])


def test_a_seed_counted_twice_is_warned_about(tmp_path, capsys):
    write_run(tmp_path / "sweep1" / "0", seed=0)
    write_run(tmp_path / "sweep2" / "0", seed=0)
    main([str(tmp_path)])
    assert f"{SD_KD}: seed 0 counted more than once" in capsys.readouterr().err


def finished_sweep(root: Path, seeds: int = 3) -> Path:
    for seed in range(seeds):
        write_run(root / str(seed), seed=seed, overrides=("pair=cifar100/res32x4_shv1", "distill=sd_kd"))
    return root


def test_failed_and_diverged_jobs_are_listed_below_the_table_not_averaged(tmp_path, capsys):
    """A failed job's results.json holds only its status, overrides and error: its sweep's runs name its setting."""
    sweep = finished_sweep(tmp_path / "sweep", seeds=2)
    overrides = ["pair=cifar100/res32x4_shv1", "distill=sd_kd"]
    (sweep / "2").mkdir()
    diverged = {"status": "diverged", "overrides": [*overrides, "seed=2"], "error": "sdd-train: the loss is nan"}
    (sweep / "2" / "results.json").write_text(json.dumps(diverged | {"seed": 2, "val/acc1": 0.01}))
    (sweep / "3").mkdir()
    error = "sdd-train: configuration error: distill.beta=-1 must be positive\n(SDD_DEBUG=1 shows the full traceback)"
    (sweep / "3" / "results.json").write_text(
        json.dumps({"status": "failed", "overrides": [*overrides, "seed=3"], "error": error})
    )
    assert main([str(sweep)]) == 0
    out, err = capsys.readouterr()
    (row,) = summarize(collect(sweep))
    assert row.setting == SD_KD and row.n == 2 and row.stats("val/acc1")[2] == 2  # the diverged run not averaged
    table, section = (sweep / "summary.md").read_text().split("## Failed and diverged jobs")
    assert "| 2: seed 2 diverged, seed 3 failed |" in table and section in out
    assert section.index(f"{sweep / '2'}: **diverged** ({SD_KD}, seed 2)") < section.index(f"{sweep / '3'}: **failed**")
    assert "  overrides: `pair=cifar100/res32x4_shv1 distill=sd_kd seed=3`" in section
    assert "  error: sdd-train: configuration error: distill.beta=-1 must be positive\n  (SDD_DEBUG=1" in section
    assert "error: sdd-train: the loss is nan" in section and "diverged, not averaged" not in err


def test_summary_never_overwrites_another_commands_files_but_its_own(tmp_path, capsys):
    sweep = finished_sweep(tmp_path / "sweep")
    quickstart_table = "| step | best top-1 |\n|---|---|\n"
    (sweep / "summary.md").write_text(quickstart_table)
    assert main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"sdd-summary: {sweep / 'summary.md'} exists and was not written by sdd-summary: it is left as it is\n"
        "write the summary elsewhere with --out DIR (or move that file away)\n"
    )
    assert (sweep / "summary.md").read_text() == quickstart_table and not (sweep / "summary.csv").exists()
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    (sweep / "summary.md").unlink()
    (sweep / "summary.csv").write_text("mine\n")  # no summary.md of sdd-summary: the other files are not its
    assert main([str(sweep)]) == 2 and "summary.csv exists and was not written" in capsys.readouterr().err
    # its own files, it overwrites: a second run on the same folder
    for _ in range(2):
        assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "summary.md").read_text().startswith(MARKER + "\n")


@pytest.mark.parametrize("problem", ["full disk", "file in the way"])
def test_an_unwritable_out_folder_is_two_lines_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch, problem):
    sweep = finished_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    out.mkdir()
    if problem == "full disk":

        def full_disk(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
        where, fix = out / "summary.md", "free some space there, or write elsewhere with --out DIR"
    else:
        (out / "file").write_text("")
        out = where = out / "file" / "summary"
        fix = "write elsewhere with --out DIR"
    assert main([str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"sdd-summary: cannot write {where}: ") and err[1].startswith(fix)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ([] if problem == "full disk" else ["file"])


def test_console_script_exits_0_quietly_and_2_with_two_lines(tmp_path):
    """As the generated ``sdd-summary`` wrapper runs it: ``sys.exit(main())``."""
    sweep = finished_sweep(tmp_path / "sweep")
    command = [
        sys.executable,
        "-c",
        "import sys; from sdd_lightning.cli.summary import main; sys.exit(main())",
        str(sweep),
    ]
    env = subprocess_env(SDD_DEBUG=None)  # as most users run it
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == "" and "3 runs; written to" in done.stdout
    (sweep / "summary.csv").unlink()
    (sweep / "summary.md").write_text("another table\n")
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and not refused.stdout and "Traceback" not in refused.stderr
    assert len(refused.stderr.splitlines()) == 2 and "--out DIR" in refused.stderr
