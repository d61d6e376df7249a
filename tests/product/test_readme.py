"""The sdd-train commands the README gives compose (every group option and override exists)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from helpers.app import compose_config
from omegaconf import OmegaConf

from sdd_lightning.catalog import CONF_DIR

README = Path(__file__).resolve().parents[2] / "README.md"


def _files_written(block: str) -> dict[str, str]:
    """The files a README block writes with ``cat > PATH <<'END' ... END``: {path: text}."""
    return {path: text for path, end, text in re.findall(r"cat > (\S+) <<'(\w+)'\n(.*?)^\2$", block, re.S | re.M)}


def _commands() -> list[tuple[list[str], dict[str, str]]]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("sdd-train"):
                commands.append((shlex.split(line)[1:], _files_written(block)))
    return commands


def _single_run(args: list[str], root: Path) -> list[str]:
    """Overrides of one job: sweep lists reduced to their first value, launcher options left out, and a user's
    ``--config-dir DIR`` (relative to ``root``) as the search path entry it stands for."""
    overrides = []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg == "--config-dir":
            overrides.append(f"hydra.searchpath=[file://{(root / args.pop(0)).resolve()}]")
            continue
        if arg == "-m" or arg.startswith(("hydra/launcher=", "hydra.launcher.", "hparams_search=")):
            continue
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


COMMANDS = _commands()
# (teacher, student) of each pair or teacher experiment the README's commands name: res32x4_shv1 is a
# ResNet32x4 teacher and a ShuffleV1 student, teacher_resnet32x4 trains a ResNet32x4 alone.
NETWORKS = {
    "cifar100/res32x4_shv1": ("resnet32x4", "ShuffleV1"),
    "cifar100/res32x4_res8x4": ("resnet32x4", "resnet8x4"),
    "cifar100/teacher_resnet32x4": (None, "resnet32x4"),
    "cub200/res32x4_shv1": ("resnet32x4", "ShuffleV1"),
    "cub200/teacher_resnet32x4": (None, "resnet32x4"),
    "imagenet/res34_res18": ("imagenet_resnet34", "imagenet_resnet18"),
    "imagenet/res50_mv1": ("imagenet_resnet50", "MobileNetV1"),
}


def test_the_readme_gives_commands():
    assert len(COMMANDS) >= 8
    assert any("--config-dir" in args for args, _ in COMMANDS)  # a user's own experiment, outside the package


@pytest.mark.parametrize("args, files", COMMANDS, ids=[" ".join(c)[:60] for c, _ in COMMANDS])
def test_readme_command_composes(args, files, tmp_path):
    for path, text in files.items():  # what the README's block writes before it runs sdd-train
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    overrides = _single_run(args, tmp_path)
    cfg = compose_config(overrides)
    choices = cfg.hydra.runtime.choices
    for override in overrides:  # every group option the command names is the one composed
        key, _, value = override.partition("=")
        if (CONF_DIR / key).is_dir():
            assert choices[key] == value, (key, choices[key], value)
    named = choices.get("pair") or choices.get("experiment")  # a user's experiment names its pair
    if named is None:  # no pair: the command names both networks
        assert f"student.arch={cfg.student.arch}" in args and f"teacher.arch={cfg.teacher.arch}" in args
    else:
        assert (cfg.teacher.arch, cfg.student.arch) == NETWORKS[named]
    for text in files.values():  # the user's experiment file was found and applied
        assert cfg.task_name == yaml.safe_load(text)["task_name"]
    for arg in args:  # every plain value the command sets is the composed one
        key, sep, value = arg.partition("=")
        if sep and "," not in value and not key.startswith(("hydra", "-", "+")) and "/" not in key:
            node = OmegaConf.select(cfg, key)
            if not (CONF_DIR / key).is_dir():  # a group's choice is a file, not a value
                assert str(node) == value or str(node) == str(yaml.safe_load(value)), (key, node, value)
