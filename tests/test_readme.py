"""The sdd-train commands the README gives compose (every group option and override exists)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from app_helpers import compose_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[list[str]]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("sdd-train"):
                commands.append(shlex.split(line)[1:])
    return commands


def _single_run(args: list[str]) -> list[str]:
    """Overrides of one job: sweep lists reduced to their first value, launcher options left out."""
    overrides = []
    for arg in args:
        if arg == "-m" or arg.startswith(("hydra/launcher=", "hydra.launcher.", "hparams_search=")):
            continue
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


COMMANDS = _commands()


def test_the_readme_gives_commands():
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_composes(args):
    cfg = compose_config(_single_run(args))
    assert cfg.student.arch is not None
