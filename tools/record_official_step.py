"""Records the official SDD training step, for the oracle test of this project's step (tests/training/test_oracle.py).

Run by hand, against the official repository checked out in a scratch folder outside this project (it is never
vendored or committed; only the figures are)::

    git clone https://github.com/shicaiwei123/SDD-CVPR2024 /tmp/official-sdd
    OMP_NUM_THREADS=1 .venv/bin/python tools/record_official_step.py /tmp/official-sdd

A checkout that is not a git work tree (e.g. an unpacked archive) needs ``--commit <its 40-hex commit>``. It takes
about a minute on one CPU core and writes ``tests/assets/official_step.json`` (``--out`` to write elsewhere) with:

- the official repository's commit and the shared rules' version (``tests/helpers/oracle_rules.py``);
- for each method (KD, SD-KD, DKD, SD-DKD, NKD, SD-NKD) on ResNet32x4 -> ResNet8x4 and WRN-40-2 -> VGG8: the
  official distiller and networks it ran, the recipe values the official code used (read off the built
  distiller, the official ``mdistiller/engine/cfg.py`` defaults, the pair's YAML file and the ``--M`` of the
  authors' scripts), and per SGD step the official loss (and its CE and distillation parts) and checksums of the
  student's parameters and BatchNorm statistics;
- the labels of every step (the rule of ``oracle_rules.labels``, applied to the official teacher);
- the set of views the official CIFAR-100 training transform draws (crop offsets x flips), observed over many
  draws on an image that encodes each pixel's position.

How a step is run: the official networks (``cifar_model_dict``) and distiller (``distiller_dict``) are built in
float64 and set by the shared naming rule; the official trainer's own ``init_optimizer``, ``adjust_learning_rate``
and ``train_iter`` (forward, sum of the loss terms, backward, gradient clipping at norm 40, SGD step) run each of
``STEPS`` fixed batches at epoch ``EPOCH``. The official ``train.py`` is not run: it needs CUDA, the CIFAR-100
download and the trained teachers; the teachers' weights here come from the naming rule instead.

What this script patches, in its own process only (the checkout is not modified):

- ``torch.Tensor.cuda`` returns the tensor unchanged (``train_iter`` and the losses call ``.cuda()``);
- ``torch.Tensor.float`` returns a float64 tensor unchanged (``train_iter`` casts the images with ``.float()``,
  which would make them float32 against float64 weights); other dtypes convert as usual;
- when ``yacs`` is not installed, a minimal attribute-dict stands in for its ``CfgNode`` (the official
  ``cfg.py`` only builds a tree of defaults with it; the YAML files are merged here); when ``scipy`` is not
  installed, an empty ``scipy.stats`` stands in for it (only the OFD distiller, not run here, imports it).
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import oracle_rules as rules  # noqa: E402  (the shared rules live with the test helpers)

# Each pair: the official network names (plain for KD/DKD, the `_sdd` variants that also return region logits for
# the rest) and the --M the authors' scripts pass for each SD method.
PAIRS = {
    "res32x4_res8x4": {
        "teacher": "resnet32x4",
        "student": "resnet8x4",
        "config_stem": "res32x4_res8x4",
        "M": {"sd_kd": "[1,2]", "sd_dkd": "[1,2]", "sd_nkd": "[1,2]"},
        "M_source": "teacher_resnet32x4.sh: --M [1,2] for sdd_kd and sdd_nkd res32x4_res8x4 (M = {1,2} for this pair)",
    },
    "wrn40_2_vgg8": {
        "teacher": "wrn_40_2",
        "student": "vgg8",
        "config_stem": "wrn40_2_vgg8",
        "M": {"sd_kd": "[1,2,4]", "sd_dkd": "[1,2,4]", "sd_nkd": "[1,2]"},
        "M_source": "teacher_wrn.sh: --M [1,2,4] for sdd_kd and sdd_dkd wrn40_2_vgg8, --M [1,2] for sdd_nkd",
    },
}

# Each method: the official distiller, whether it uses the `_sdd` networks, and its config file.
METHODS = {
    "kd": {"distiller": "KD", "sdd_networks": False, "config": "configs/cifar100/kd.yaml"},
    "dkd": {"distiller": "DKD", "sdd_networks": False, "config": "configs/cifar100/dkd/{stem}.yaml"},
    # The SDD paper's NKD rows are SDD_NKD with M [1] (nkd_loss_origin: T and gamma from cfg.DKD); the repository's
    # NKDLoss distiller hard-codes T 1 and gamma 1.5 and is not what the paper's table ran.
    "nkd": {"distiller": "SDD_NKD", "sdd_networks": True, "config": "configs/cifar100/sdd_nkd/{stem}.yaml"},
    "sd_kd": {"distiller": "SDD_KD", "sdd_networks": True, "config": "configs/cifar100/sdd_kd/{stem}.yaml"},
    "sd_dkd": {"distiller": "SDD_DKD", "sdd_networks": True, "config": "configs/cifar100/sdd_dkd/{stem}.yaml"},
    "sd_nkd": {"distiller": "SDD_NKD", "sdd_networks": True, "config": "configs/cifar100/sdd_nkd/{stem}.yaml"},
}
WARMUP_ARGUMENT = 20.0
"""``train_origin.py --warmup`` (default 20.0), the ``cfg.warmup`` of SDD_DKD; the authors' scripts do not set it."""
COMPLEMENTARY_WEIGHT = 2.0
"""The weight the official SDD losses give complementary regions (hard-coded ``index[...] = 2``)."""
GRADIENT_CLIP_NORM = 40.0
"""``BaseTrainer.train_iter``: ``clip_grad_norm_(distiller.parameters(), max_norm=40)``."""
AUGMENTATION_DRAWS = 20000


class _AttrDict(dict):
    """Stands in for yacs' ``CfgNode``: a dict whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


def _stub(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def patch_runtime() -> None:
    """The run-time patches listed in the module docstring."""
    if importlib.util.find_spec("yacs") is None:
        config = _stub("yacs.config", CfgNode=_AttrDict)
        _stub("yacs", config=config)
    if importlib.util.find_spec("scipy") is None:
        stats = _stub("scipy.stats", norm=None)
        _stub("scipy", stats=stats)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    to_float = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: self if self.dtype == torch.float64 else to_float(self)


def _merge(node, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(node[key], value)
        else:
            node[key] = value


def official_cfg(repo: Path, config: str, M: str | None):
    """The official config of one run: cfg.py's defaults, the YAML file, and train_origin.py's arguments."""
    from mdistiller.engine.cfg import CFG

    cfg = copy.deepcopy(CFG)
    _merge(cfg, yaml.safe_load((repo / config).read_text()))
    cfg.M = M
    cfg.warmup = WARMUP_ARGUMENT
    return cfg


def build_network(name: str, M: str | None) -> torch.nn.Module:
    from mdistiller.models.cifar import cifar_model_dict

    constructor = cifar_model_dict[name][0]
    kwargs = {"num_classes": rules.NUM_CLASSES}
    if M is not None:
        kwargs["M"] = M
    previous = torch.get_default_dtype()
    torch.set_default_dtype(rules.DTYPE)
    try:
        return constructor(**kwargs)
    finally:
        torch.set_default_dtype(previous)


def pair_labels(pair: dict) -> list[list[int]]:
    """The labels of every step: the shared rule on the official teacher's global and 2x2 predictions."""
    teacher = build_network(pair["teacher"] + "_sdd", "[1,2]")
    rules.set_weights(teacher, "teacher")
    teacher.eval()
    labels = []
    with torch.no_grad():
        for step in range(rules.STEPS):
            logits, patches = teacher(rules.images(step))  # patches: (B, K, R)
            labels.append(rules.labels(step, logits, patches.permute(0, 2, 1)).tolist())
    return labels


def recipe(method: str, distiller, cfg, M: str | None) -> dict:
    """The values the official code uses for this run, in the project's vocabulary."""
    kind = METHODS[method]["distiller"]
    scales = [1] if M in (None, "[1]") else json.loads(M)
    if kind in ("KD", "SDD_KD"):
        loss = {"name": "kd", "temperature": float(distiller.temperature)}
        weights = {"ce_weight": distiller.ce_loss_weight, "kd_weight": distiller.kd_loss_weight, "warmup_epochs": 0.0}
    elif kind in ("DKD", "SDD_DKD"):
        loss = {
            "name": "dkd",
            "temperature": float(distiller.temperature),
            "alpha": float(distiller.alpha),
            "beta": float(distiller.beta),
        }
        weights = {"ce_weight": distiller.ce_loss_weight, "kd_weight": 1.0, "warmup_epochs": float(distiller.warmup)}
    else:
        loss = {"name": "nkd", "temperature": float(distiller.temp), "gamma": float(distiller.gamma)}
        weights = {"ce_weight": distiller.ce_loss_weight, "kd_weight": 1.0, "warmup_epochs": float(distiller.warmup)}
    warmup = weights["warmup_epochs"]
    return {
        "scales": scales,
        **{key: float(value) for key, value in weights.items()},
        "warmup_factor": min(rules.EPOCH / warmup, 1.0) if warmup > 0 else 1.0,
        "complementary_weight": COMPLEMENTARY_WEIGHT,
        "loss": loss,
        "lr": float(cfg.SOLVER.LR),
        "momentum": float(cfg.SOLVER.MOMENTUM),
        "weight_decay": float(cfg.SOLVER.WEIGHT_DECAY),
        "gradient_clip_norm": GRADIENT_CLIP_NORM,
    }


def run_case(repo: Path, pair_name: str, method: str, labels: list[list[int]]) -> dict:
    """Builds the official run of one setting and records its first ``STEPS`` steps."""
    from mdistiller.distillers import distiller_dict
    from mdistiller.engine.trainer import BaseTrainer
    from mdistiller.engine.utils import AverageMeter, adjust_learning_rate

    pair, spec = PAIRS[pair_name], METHODS[method]
    M = pair["M"].get(method, "[1]") if spec["sdd_networks"] else None
    suffix = "_sdd" if spec["sdd_networks"] else ""
    config = spec["config"].format(stem=pair["config_stem"])
    if not (repo / config).is_file():  # no plain-DKD file for this pair: the pair's SD-DKD file has its solver
        config = f"configs/cifar100/sdd_dkd/{pair['config_stem']}.yaml"
    cfg = official_cfg(repo, config, M)

    teacher = build_network(pair["teacher"] + suffix, M)
    student = build_network(pair["student"] + suffix, M)
    rules.set_weights(teacher, "teacher")
    rules.set_weights(student, "student")
    distiller = distiller_dict[spec["distiller"]](student, teacher, cfg)

    trainer = BaseTrainer.__new__(BaseTrainer)  # the official step without the trainer's logging and data set-up
    trainer.cfg = cfg
    trainer.distiller = torch.nn.DataParallel(distiller)  # as train_origin.py; without CUDA it calls the module
    trainer.optimizer = trainer.init_optimizer(cfg)
    lr = adjust_learning_rate(rules.EPOCH, cfg, trainer.optimizer)
    trainer.distiller.train()  # train_epoch: the student trains, the teacher stays in eval mode

    meters = {name: AverageMeter() for name in ("training_time", "data_time", "losses", "top1", "top5")}
    initial = rules.snapshot(student)
    steps = []
    for step in range(rules.STEPS):
        x, y = rules.images(step), torch.tensor(labels[step])
        _, parts = trainer.train_iter((x, y, torch.arange(len(y))), rules.EPOCH, meters)
        record = {"loss": float(sum(part.mean() for part in parts.values()))}
        record |= {name: float(part.mean()) for name, part in parts.items()}
        record |= rules.student_checksums(student, initial)
        steps.append(record)
        print(f"{pair_name}/{method} step {step}: loss {record['loss']:.12g}", file=sys.stderr)

    official = {
        "distiller": spec["distiller"],
        "teacher": pair["teacher"] + suffix,
        "student": pair["student"] + suffix,
        "M": M,
        "config": config,
        "epoch": rules.EPOCH,
        "lr_at_epoch": float(lr),
    }
    if M is not None and M != "[1]":
        official["M_source"] = pair["M_source"]
    return {"official": official, "recipe": recipe(method, distiller, cfg, M), "steps": steps}


def position_image():
    """A 32x32 RGB image whose red and green channels are row + 1 and column + 1."""
    from PIL import Image

    pixels = torch.zeros(rules.IMAGE_SIZE, rules.IMAGE_SIZE, 3, dtype=torch.uint8)
    pixels[..., 0] = (torch.arange(rules.IMAGE_SIZE) + 1)[:, None]
    pixels[..., 1] = (torch.arange(rules.IMAGE_SIZE) + 1)[None, :]
    return Image.fromarray(pixels.numpy())


def augmentation_views() -> dict:
    """The (row offset, column offset, flip) of many draws of the official CIFAR-100 training transform."""
    from mdistiller.dataset.cifar100 import get_cifar100_train_transform

    transform = get_cifar100_train_transform()
    normalize = transform.transforms[-1]
    mean, std = torch.tensor(normalize.mean).view(3, 1, 1), torch.tensor(normalize.std).view(3, 1, 1)
    image, half = position_image(), rules.IMAGE_SIZE // 2
    padding = next(t.padding for t in transform.transforms if type(t).__name__ == "RandomCrop")
    torch.manual_seed(0)
    counts: dict[tuple[int, int, int], int] = {}
    for _ in range(AUGMENTATION_DRAWS):
        pixels = ((transform(image) * std + mean) * 255).round().long()
        centre = pixels[:, half, half]
        flipped = int(pixels[1, half, half - 1] > centre[1])
        dy = int(centre[0]) - 1 + padding - half
        dx = int(centre[1]) - 1 + padding - (half - 1 if flipped else half)
        counts[(dy, dx, flipped)] = counts.get((dy, dx, flipped), 0) + 1
    return {
        "source": "mdistiller/dataset/cifar100.py get_cifar100_train_transform: RandomCrop(32, padding=4) + "
        "RandomHorizontalFlip",
        "padding": padding,
        "draws": AUGMENTATION_DRAWS,
        "views": [list(view) for view in sorted(counts)],
        "fewest_draws_of_a_view": min(counts.values()),
        "most_draws_of_a_view": max(counts.values()),
    }


def checkout_commit(repo: Path) -> str:
    """The commit of ``repo`` when it is the top of a git work tree, else ``""``."""

    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") if git("rev-parse", "--show-toplevel") == str(repo) else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official", type=Path, help="the official SDD-CVPR2024 repository, checked out")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "assets" / "official_step.json")
    parser.add_argument("--commit", help="the checkout's commit, when it is not a git work tree (e.g. an archive)")
    args = parser.parse_args(argv)
    repo = args.official.resolve()
    commit = args.commit or checkout_commit(repo)
    if len(commit) != 40:
        parser.error(f"{repo} is not a git work tree: give its commit with --commit")
    patch_runtime()
    sys.path.insert(0, str(repo))
    torch.set_num_threads(1)

    cases, labels = {}, {}
    for pair_name, pair in PAIRS.items():
        labels[pair_name] = pair_labels(pair)
        for method in METHODS:
            cases[f"cifar100/{pair_name}/{method}"] = run_case(repo, pair_name, method, labels[pair_name])
    record = {
        "official": {"repository": "github.com/shicaiwei123/SDD-CVPR2024", "commit": commit},
        "made_by": "tools/record_official_step.py",
        "rules": {
            "module": "tests/helpers/oracle_rules.py",
            "version": rules.RULE_VERSION,
            "dtype": str(rules.DTYPE).removeprefix("torch."),
            "batch_size": rules.BATCH_SIZE,
            "image_size": rules.IMAGE_SIZE,
            "steps": rules.STEPS,
            "epoch": rules.EPOCH,
            "label_cells": list(rules.CELLS),
            "classifier_gain": rules.CLASSIFIER_GAIN,
        },
        "torch": torch.__version__,
        "labels": labels,
        "cases": cases,
        "augmentation": augmentation_views(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
