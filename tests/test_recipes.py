"""The recipes compute what the official code computed: the generated table is current, and the values that an
audit against the official code (shicaiwei123/SDD-CVPR2024, mdistiller) found wrong are pinned one by one."""

from __future__ import annotations

import inspect

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sdd_lightning.catalog import compose_setting
from sdd_lightning.data import Cifar100DataModule
from sdd_lightning.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from sdd_lightning.reporting import recipes


def test_docs_recipes_md_is_generated_from_the_current_configs():
    committed = recipes.TABLE_PATH.read_text()
    generated = recipes.render(*recipes.recipe_rows())
    assert committed == generated, "docs/recipes.md is out of date: run `python -m sdd_lightning.reporting.recipes`"


def _distill(setting: str):
    return compose_setting(setting).distill


@pytest.mark.parametrize("pair", ["res34_res18", "res50_mv1"])
def test_imagenet_sd_kd_uses_mdistillers_kd_defaults(pair):
    # the official imagenet/*/sdd_kd.yaml have no KD section: engine/cfg.py's T 4, CE 0.1, KD 0.9
    d = _distill(f"imagenet/{pair}/sd_kd")
    assert (d.loss.temperature, d.ce_weight, d.kd_weight, d.warmup_epochs) == (4.0, 0.1, 0.9, 0)
    kd = _distill(f"imagenet/{pair}/kd")  # the plain KD configs: T 1, CE 0.5, KD 0.5
    assert (kd.loss.temperature, kd.ce_weight, kd.kd_weight) == (1.0, 0.5, 0.5)


@pytest.mark.parametrize(("pair", "beta"), [("res34_res18", 0.5), ("res50_mv1", 2.0)])
def test_imagenet_nkd_settings(pair, beta):
    sd = _distill(f"imagenet/{pair}/sd_nkd")  # SDD_NKDLoss: T = DKD.T, gamma = DKD.BETA, warm-up DKD.WARMUP
    assert sd.loss._target_.endswith("NKDLoss")
    assert (sd.loss.temperature, sd.loss.gamma, sd.ce_weight, sd.warmup_epochs) == (1.0, beta, 1.0, 1)
    plain = _distill(f"imagenet/{pair}/nkd")  # NKDLoss: T 1 and gamma 1.5 hard-coded
    assert (plain.loss.temperature, plain.loss.gamma, plain.warmup_epochs) == (1.0, 1.5, 1)
    dkd = _distill(f"imagenet/{pair}/sd_dkd")
    loss = dkd.loss
    assert (loss.temperature, loss.alpha, loss.beta, dkd.ce_weight, dkd.warmup_epochs) == (1.0, 1.0, beta, 1.0, 1)


@pytest.mark.parametrize("method", ["kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd"])
@pytest.mark.parametrize("pair", ["res34_res18", "res50_mv1"])
def test_imagenet_settings_run_in_fp32_as_the_official_trainer(pair, method):
    # the official mdistiller/engine/trainer.py has no autocast; trainer=ddp alone would give bf16-mixed
    cfg = compose_setting(f"imagenet/{pair}/{method}")
    assert cfg.trainer.precision == "32-true" and cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert compose_setting(f"imagenet/{pair}/{method}", extra=["trainer.precision=bf16-mixed"]).trainer.precision == (
        "bf16-mixed"
    )


@pytest.mark.parametrize("experiment", ["imagenet/baseline_resnet18", "imagenet/baseline_mobilenetv1"])
def test_imagenet_baselines_run_in_fp32(experiment):
    assert compose_setting(experiment).trainer.precision == "32-true"


@pytest.mark.parametrize("pair", ["res50_vgg8", "wrn40_2_vgg8"])
def test_cifar_sd_nkd_into_vgg8_uses_two_scales(pair):
    assert list(_distill(f"cifar100/{pair}/sd_nkd").scales) == [1, 2]
    assert list(_distill(f"cifar100/{pair}/sd_kd").scales) == [1, 2, 4]


def test_cub_training_loader_drops_the_last_incomplete_batch():
    assert instantiate(compose_setting("cub200/res32x4_shv1/sd_kd").data).drop_last is True
    assert instantiate(compose_setting("cifar100/res32x4_shv1/sd_kd").data).drop_last is False


def test_the_cifar_data_module_as_a_recipe_builds_it_pads_by_4_and_flips():
    """SDD:mdistiller/dataset/cifar100.py:120-121: RandomCrop(32, padding=4), RandomHorizontalFlip(). Built from the
    composed setting, as a run builds it, so a changed constructor default cannot hide behind a test's arguments."""
    datamodule = instantiate(compose_setting("cifar100/res32x4_shv1/sd_kd").data)
    assert datamodule.padding == 4
    assert inspect.signature(Cifar100DataModule).parameters["padding"].default == 4  # the module built in Python


@pytest.mark.parametrize(
    ("setting", "num_classes"),
    [
        # SDD:mdistiller/dataset/cub200.py:152-161: Resize((256, 256)), then RandomCrop(224) / CenterCrop(224)
        ("cub200/res32x4_shv1/sd_kd", 200),
        # SDD:mdistiller/dataset/imagenet.py:75,88-89: RandomResizedCrop(224); Resize(256), CenterCrop(224)
        ("imagenet/res34_res18/sd_kd", 1000),
    ],
)
def test_the_image_file_data_modules_as_recipes_build_them_resize_to_256_and_crop_224(setting, num_classes):
    """Built from the composed setting, as a run builds them: no config sets these values, so the constructors'
    defaults are the recipe, and a changed default shows here."""
    datamodule = instantiate(compose_setting(setting).data)
    assert (datamodule.num_classes, datamodule.resize_size, datamodule.crop_size) == (num_classes, 256, 224)


def test_cifar_normalisation_is_the_official_one():
    # mdistiller/dataset/cifar100.py, the constants the CRD teachers were trained with
    assert CIFAR100_MEAN == (0.5071, 0.4867, 0.4408)
    assert CIFAR100_STD == (0.2675, 0.2565, 0.2761)


# Values the official files set, one row each: (setting, config key, value, where the official repository sets it).
# "SDD:" is shicaiwei123/SDD-CVPR2024; "mdistiller:" is megvii-research/mdistiller.
OFFICIAL_VALUES = [
    # the teachers train with the recipe's own solver (no pair file sets it for them)
    ("cifar100/teacher_resnet32x4", "optimizer.lr", 0.05, "mdistiller:configs/cifar100/vanilla.yaml:12"),
    ("cifar100/teacher_resnet32x4", "optimizer.weight_decay", 5e-4, "mdistiller:configs/cifar100/vanilla.yaml:15"),
    (
        "cifar100/teacher_resnet32x4",
        "scheduler.milestones",
        [150, 180, 210],
        "mdistiller:configs/cifar100/vanilla.yaml:13",
    ),
    # the plain DKD of this pair has its own config with beta 6; its SD-DKD and SD-NKD configs set none (8)
    ("cifar100/res32x4_mv2/dkd", "distill.loss.beta", 6.0, "SDD:configs/cifar100/dkd/resnet32_mobinetv2.yaml:19"),
    ("cifar100/res32x4_mv2/sd_dkd", "distill.loss.beta", 8.0, "SDD:mdistiller/engine/cfg.py:165 (DKD.BETA)"),
    ("cifar100/res32x4_mv2/sd_nkd", "distill.loss.gamma", 8.0, "SDD:mdistiller/engine/cfg.py:165 (DKD.BETA)"),
    # the pairs of configs/cifar100/sdd_{kd,dkd,nkd}/ that are settings since the re-audit
    ("cifar100/res56_res20/dkd", "distill.loss.beta", 2.0, "SDD:configs/cifar100/dkd/res56_res20.yaml:19"),
    ("cifar100/res56_res20/sd_dkd", "distill.loss.beta", 2.0, "SDD:configs/cifar100/sdd_dkd/res56_res20.yaml:19"),
    ("cifar100/res56_res20/sd_nkd", "distill.loss.gamma", 2.0, "SDD:configs/cifar100/sdd_nkd/res56_res20.yaml:19"),
    ("cifar100/res56_res20/kd", "optimizer.lr", 0.05, "SDD:configs/cifar100/sdd_kd/res56_res20.yaml:12"),
    ("cifar100/res110_res32/dkd", "distill.loss.beta", 2.0, "SDD:configs/cifar100/dkd/res110_res32.yaml:19"),
    ("cifar100/res110_res32/sd_dkd", "distill.loss.beta", 2.0, "SDD:configs/cifar100/sdd_dkd/res110_res32.yaml:19"),
    ("cifar100/res110_res32/sd_nkd", "distill.loss.gamma", 2.0, "SDD:configs/cifar100/sdd_nkd/res110_res32.yaml:19"),
    ("cifar100/wrn40_2_wrn16_2/dkd", "distill.loss.beta", 6.0, "SDD:configs/cifar100/dkd/wrn40_2_wrn_16_2.yaml:19"),
    (
        "cifar100/wrn40_2_wrn16_2/sd_nkd",
        "distill.loss.gamma",
        6.0,
        "SDD:configs/cifar100/sdd_nkd/wrn40_2_wrn_16_2.yaml:19",
    ),
    ("cifar100/wrn40_2_wrn40_1/dkd", "distill.loss.beta", 6.0, "SDD:configs/cifar100/dkd/wrn40_2_wrn_40_1.yaml:19"),
    (
        "cifar100/wrn40_2_wrn40_1/sd_dkd",
        "distill.loss.beta",
        6.0,
        "SDD:configs/cifar100/sdd_dkd/wrn40_2_wrn_40_1.yaml:19",
    ),
    ("cifar100/vgg13_shv1/sd_dkd", "distill.loss.beta", 6.0, "SDD:configs/cifar100/sdd_dkd/vgg13_shuffv1.yaml:19"),
    ("cifar100/vgg13_shv1/sd_nkd", "distill.loss.gamma", 6.0, "SDD:configs/cifar100/sdd_nkd/vgg13_shuffv1.yaml:19"),
    ("cifar100/vgg13_shv1/sd_kd", "optimizer.lr", 0.01, "SDD:configs/cifar100/sdd_kd/vgg13_shuffv1.yaml:12"),
    ("cifar100/vgg13_vgg8/dkd", "distill.loss.beta", 6.0, "SDD:configs/cifar100/dkd/vgg13_vgg8.yaml:19"),
    ("cifar100/vgg13_vgg8/sd_dkd", "distill.loss.beta", 6.0, "SDD:configs/cifar100/sdd_dkd/vgg13_vgg8.yaml:19"),
    ("cifar100/vgg13_vgg8/sd_nkd", "distill.loss.gamma", 6.0, "SDD:configs/cifar100/sdd_nkd/vgg13_vgg8.yaml:19"),
    ("cifar100/vgg13_vgg8/sd_kd", "distill.scales", [1, 2], "SDD:teacher_vgg.sh:29-30 (--M [1,2])"),
    ("cifar100/vgg13_vgg8/sd_dkd", "distill.scales", [1, 2], "SDD:teacher_vgg.sh:11-12 (--M [1,2])"),
    ("cifar100/vgg13_vgg8/sd_nkd", "distill.scales", [1, 2], "SDD:teacher_vgg.sh:47-48 (--M [1,2])"),
    ("cifar100/res32x4_res8x4/sd_nkd", "distill.scales", [1, 2], "SDD:teacher_resnet32x4.sh:44-45 (--M [1,2])"),
    ("cifar100/res32x4_res8x4/dkd", "distill.loss.beta", 8.0, "SDD:configs/cifar100/dkd/res32x4_res8x4.yaml (none: 8)"),
    # the CIFAR-100 solver, pinned literally (docs/recipes.md is generated from the configs, so it is no reference)
    ("cifar100/res32x4_shv1/sd_kd", "data.batch_size", 64, "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:10"),
    ("cifar100/res32x4_shv1/sd_kd", "epochs", 240, "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:11"),
    ("cifar100/res32x4_shv1/sd_kd", "optimizer.lr", 0.01, "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:12"),
    (
        "cifar100/res32x4_shv1/sd_kd",
        "scheduler.milestones",
        [150, 180, 210],
        "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:13",
    ),
    ("cifar100/res32x4_shv1/sd_kd", "scheduler.gamma", 0.1, "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:14"),
    (
        "cifar100/res32x4_shv1/sd_kd",
        "optimizer.weight_decay",
        0.0005,
        "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:15",
    ),
    ("cifar100/res32x4_shv1/sd_kd", "optimizer.momentum", 0.9, "SDD:configs/cifar100/sdd_kd/res32x4_shuv1.yaml:16"),
    (
        "cifar100/res32x4_shv1/sd_kd",
        "distill.loss.temperature",
        4.0,
        "SDD:mdistiller/engine/cfg.py:61 (KD.TEMPERATURE)",
    ),
    ("cifar100/res32x4_shv1/sd_kd", "distill.ce_weight", 0.1, "SDD:mdistiller/engine/cfg.py:63 (KD.LOSS.CE_WEIGHT)"),
    ("cifar100/res32x4_shv1/sd_kd", "distill.kd_weight", 0.9, "SDD:mdistiller/engine/cfg.py:64 (KD.LOSS.KD_WEIGHT)"),
]


@pytest.mark.parametrize(
    ("setting", "key", "value", "source"), OFFICIAL_VALUES, ids=[f"{row[0]}:{row[1]}" for row in OFFICIAL_VALUES]
)
def test_a_value_the_official_files_set(setting, key, value, source):
    """Each value as the official file (``source``, file and line) sets it, in the composed config of the setting."""
    assert OmegaConf.select(compose_setting(setting), key) == value, source


@pytest.mark.parametrize("pair", ["res56_res20", "res110_res32", "wrn40_2_wrn16_2", "wrn40_2_wrn40_1", "vgg13_shv1"])
def test_the_teachers_of_the_added_pairs_are_the_crd_files(pair):
    # CRD naming, as SDD lists them (mdistiller/models/cifar/__init__.py): <arch>_vanilla/ckpt_epoch_240.pth
    teacher = compose_setting(f"cifar100/{pair}/sd_kd").teacher
    assert teacher.checkpoint.endswith(f"/{teacher.arch}_vanilla/ckpt_epoch_240.pth")
