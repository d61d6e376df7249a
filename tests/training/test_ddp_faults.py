"""Faults of a DDP run (trainer=ddp_sim: two CPU processes): a process killed or stopped, SIGTERM to the launcher.

A surviving process exits in bounded time with a message (a collective timeout bounds the case where the
other process hangs), last.ckpt stays the last good one, and the run resumes in its folder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest
import torch
from helpers.app import TINY, subprocess_env
from helpers.faults import kill_tree, start_app, wait_for

# 512 images, 64 per batch and per process, two processes: 4 steps per epoch
DDP = [*TINY, "trainer=ddp_sim", "data.num_train=512"]
STEPS_PER_EPOCH = 4
DEADLINE = 240  # seconds; generous for a loaded machine, never a measurement


def _other_rank(launcher: subprocess.Popen) -> psutil.Process:
    """The second process of the run, which the launcher (rank 0) started."""
    found: list[psutil.Process] = []

    def started() -> bool:
        for child in psutil.Process(launcher.pid).children():
            try:
                if "sdd_lightning.cli.train" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:  # gone or not readable yet
                pass
        return bool(found)

    wait_for(started, launcher, timeout=DEADLINE, what="the second process")
    return found[0]


def _start_and_wait_for_an_epoch(tmp_path, *extra: str) -> tuple[subprocess.Popen, psutil.Process]:
    launcher = start_app([*DDP, "epochs=1000", f"hydra.run.dir={tmp_path}", *extra])
    other = _other_rank(launcher)
    last = tmp_path / "checkpoints" / "last.ckpt"
    wait_for(last.exists, launcher, timeout=DEADLINE, what="the first last.ckpt")
    return launcher, other


def _resume(tmp_path, epochs: int) -> dict:
    resumed = subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.train", *DDP, f"epochs={epochs}", f"hydra.run.dir={tmp_path}"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=2 * DEADLINE,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


# The launcher case runs by default; the rank-1 case (about 30 s more) with `make test-all`.
@pytest.mark.parametrize("killed", [pytest.param("rank1", marks=pytest.mark.slow), "launcher"])
def test_a_killed_process_stops_the_other_with_a_message_and_the_run_resumes(tmp_path, killed):
    launcher, other = _start_and_wait_for_an_epoch(tmp_path)
    survivor = other if killed == "launcher" else psutil.Process(launcher.pid)
    try:
        (psutil.Process(launcher.pid) if killed == "launcher" else other).send_signal(signal.SIGKILL)
        # the survivor writes into the same pipe: this returns once it has exited too
        output, _ = launcher.communicate(timeout=DEADLINE)
        survivor.wait(timeout=DEADLINE)
    finally:
        kill_tree(launcher)
        if survivor.is_running():
            survivor.kill()
    rank = 1 if killed == "launcher" else 0
    assert f"sdd-train: rank {rank} lost contact with another process" in output, output[-3000:]
    assert "Traceback" not in output
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] > 0 and last["global_step"] % STEPS_PER_EPOCH == 0  # an epoch's end, not the failure
    if killed == "rank1":
        results = _resume(tmp_path, epochs=last["epoch"] + 2)
        assert results["status"] == "finished" and results["world_size"] == 2
        assert results["global_step"] > last["global_step"]


def test_sigterm_to_the_launcher_stops_both_processes_and_saves_last_ckpt_once(tmp_path):
    launcher, other = _start_and_wait_for_an_epoch(tmp_path)
    try:
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=DEADLINE)
        other.wait(timeout=DEADLINE)
    finally:
        kill_tree(launcher)
    assert launcher.returncode != 0, output[-3000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["interrupted", "interrupted"], output[-3000:]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 0  # both stopped after the same step
    stopped = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["global_step"] == ranks[0]["global_step"]
    # saved by one process only, and only once (none at all when the stop fell on an epoch's checkpoint)
    assert output.count("saved checkpoint to") <= 1, output[-3000:]
    results = _resume(tmp_path, epochs=stopped["epoch"] + 2)
    assert results["status"] == "finished" and results["global_step"] > stopped["global_step"]


@pytest.mark.slow
def test_a_process_that_hangs_makes_the_other_fail_after_the_collective_timeout(tmp_path):
    launcher, other = _start_and_wait_for_an_epoch(tmp_path, "trainer.strategy.timeout.seconds=45")
    try:
        other.send_signal(signal.SIGSTOP)  # alive but silent: only the collective timeout ends the wait
        launcher.wait(timeout=DEADLINE)
    finally:
        other.kill()  # it holds the output pipe open
        kill_tree(launcher)
    output = launcher.stdout.read()
    assert launcher.returncode == 1, output[-3000:]
    assert "sdd-train: rank 0 lost contact with another process" in output and "Timed out" in output
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] % STEPS_PER_EPOCH == 0
