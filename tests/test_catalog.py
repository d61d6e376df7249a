"""The catalogue of published settings: names, the overrides that run them, the paper's numbers, and the message
for a mistyped group option (in-process, on small config trees written by the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdd_lightning import catalog
from sdd_lightning.catalog import (
    CONF_DIR,
    compose_setting,
    group_options,
    published,
    published_numbers,
    published_top1,
    published_top5,
    setting_name,
    setting_names,
    setting_overrides,
    unknown_group_option,
)


def _conf(tmp_path: Path, files: dict[str, str]) -> Path:
    """A config tree with the given files (relative path -> text)."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_setting_is_named_by_its_experiment_else_by_its_pair_and_method():
    assert setting_name({"experiment": "cifar100/teacher_vgg13", "pair": "cifar100/res32x4_shv1"}) == (
        "cifar100/teacher_vgg13"
    )
    assert setting_name({"experiment": None, "pair": "cifar100/res32x4_shv1", "distill": "sd_kd"}) == (
        "cifar100/res32x4_shv1/sd_kd"
    )
    assert setting_name({"pair": "cub200/vgg13_vgg8", "distill": None}) == "cub200/vgg13_vgg8/none"
    assert setting_name({"pair": "cub200/vgg13_vgg8"}) == "cub200/vgg13_vgg8/none"
    assert setting_name({"experiment": None, "pair": None, "distill": "kd"}) is None
    assert setting_name({}) is None


def test_the_papers_number_of_a_setting_and_none_for_an_ad_hoc_run():
    assert published_top1("cifar100/res32x4_shv1/sd_kd") == 76.3  # SDD_METHOD: ResNet32x4 -> ShuffleNetV1, SD-KD
    assert published_top1("imagenet/res34_res18/sd_nkd") == 72.33
    assert published_top1("cifar100/res32x4_shv1/none") is None
    assert published_top1(None) is None
    assert published_top1("") is None
    table = published()
    assert all(isinstance(name, str) and (top1 is None or isinstance(top1, float)) for name, top1 in table.items())


def test_top5_where_published_and_settings_without_a_published_number():
    # SDD's README ImageNet.png (the paper's ImageNet table): ResNet50 -> MobileNetV1, SD-DKD 73.08 / 91.09
    assert (published_top1("imagenet/res50_mv1/sd_dkd"), published_top5("imagenet/res50_mv1/sd_dkd")) == (73.08, 91.09)
    assert published_top5("imagenet/baseline_resnet18") == 89.07
    assert published_top5("imagenet/res34_res18/sd_dkd") is None and published_top5("cifar100/res32x4_shv1/kd") is None
    # a pair of the official configs with no published number: listed, with nothing published
    assert "cifar100/vgg13_shv1/sd_kd" in published() and published()["cifar100/vgg13_shv1/sd_kd"] is None
    assert published_numbers()["cifar100/vgg13_shv1/sd_kd"] == {}
    assert published_top1("cifar100/vgg13_shv1/sd_kd") is None and published_top5(None) is None


def test_the_table_is_read_from_conf_published_yaml(tmp_path, monkeypatch):
    text = "# the paper\nx/y/kd: 70\nx/teacher_a: 71.5\nx/y/sd_kd: null  # no published number\n"
    table = _conf(tmp_path, {"published.yaml": text}) / "published.yaml"
    monkeypatch.setattr(catalog, "PUBLISHED_FILE", table)
    published_numbers.cache_clear()
    setting_names.cache_clear()
    try:
        assert published() == {"x/y/kd": 70.0, "x/teacher_a": 71.5, "x/y/sd_kd": None}
        assert setting_names() == ("x/teacher_a", "x/y/kd", "x/y/sd_kd")  # catalogued, with or without a number
        assert published_top1("x/y/sd_kd") is None
        table.write_text("x/y/kd: {top1: 70, top5: 90.5}\nx/y/sd_kd: null\n")
        published_numbers.cache_clear()
        assert published_numbers() == {"x/y/kd": {"top1": 70.0, "top5": 90.5}, "x/y/sd_kd": {}}
        assert published() == {"x/y/kd": 70.0, "x/y/sd_kd": None}
        table.write_text("# nothing published yet\n")
        published_numbers.cache_clear()
        setting_names.cache_clear()
        assert published() == {} and setting_names() == ()
        for bad in ("x/y/kd: {top1: 70, top9: 1}\n", "x/y/kd: seventy\n", "x/y/kd: {top1: true}\n"):
            table.write_text(bad)
            published_numbers.cache_clear()
            with pytest.raises(ValueError, match="x/y/kd: expected a top-1, null or"):
                published()
    finally:
        published_numbers.cache_clear()
        setting_names.cache_clear()


def test_a_setting_name_becomes_the_overrides_that_run_it(tmp_path):
    conf = _conf(
        tmp_path,
        {"pair/d/p.yaml": "", "distill/kd.yaml": "", "experiment/d/teacher_a.yaml": "", "experiment/d/p/kd.yaml": ""},
    )
    assert setting_overrides("d/p/kd", conf) == ["pair=d/p", "distill=kd"]
    assert setting_overrides("d/teacher_a", conf) == ["experiment=d/teacher_a"]
    with pytest.raises(ValueError, match=r"unknown setting 'd/p/sd_kd': expected <data>/<pair>/<method>"):
        setting_overrides("d/p/sd_kd", conf)  # a pair with a method that has no file
    with pytest.raises(ValueError, match="conf/experiment/"):
        setting_overrides("d/teacher_b", conf)


def test_composing_a_setting_gives_what_sdd_train_runs():
    cfg = compose_setting("cifar100/res32x4_shv1/sd_dkd", extra=["seed=7"])
    assert (cfg.student.arch, cfg.teacher.arch, cfg.method, cfg.seed) == ("ShuffleV1", "resnet32x4", "sd_dkd", 7)
    assert list(cfg.distill.scales) == [1, 2, 4]
    teacher = compose_setting("cifar100/teacher_vgg13", CONF_DIR)
    assert (teacher.student.arch, teacher.method) == ("vgg13", "none")


def test_a_groups_options_are_its_yaml_files_also_in_sub_folders(tmp_path):
    conf = _conf(tmp_path, {"pair/b/x.yaml": "", "pair/a/y.yaml": "", "pair/a/z.yaml": "", "pair/a/notes.md": ""})
    assert group_options("pair", conf) == ["a/y", "a/z", "b/x"]
    assert group_options("distill") == sorted(["none", "kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd"])


@pytest.fixture
def small_conf(tmp_path):
    """A tree with 4 methods and 13 pairs: short groups are listed in the message, long ones counted."""
    methods = {f"distill/{m}.yaml": "" for m in ("kd", "sd_kd", "dkd", "sd_dkd")}
    pairs = {f"pair/d/p{i:02d}.yaml": "" for i in range(13)}
    return _conf(tmp_path, methods | pairs)


def test_known_options_sweeps_lists_and_other_keys_pass(small_conf):
    good = ["distill=sd_kd", "+distill=kd", "distill=kd,sd_dkd", "distill=[kd, dkd]", "pair=d/p12", "seed=3"]
    assert unknown_group_option(good, small_conf) is None
    # not group choices: no value, a null choice, a plain key=value of another node, a flag
    assert unknown_group_option(["distill=", "distill=null", "data.root=/x", "--multirun"], small_conf) is None


def test_a_mistyped_option_is_named_with_the_three_closest_known_ones(small_conf):
    message = unknown_group_option(["seed=1", "distill=sdkd"], small_conf)
    hint, known = message.split(" Known: ")
    assert hint.startswith("unknown distill 'sdkd'. Did you mean 'sd_kd' or ")  # the closest first
    assert hint.count(" or ") == 2 and known == "dkd, kd, sd_dkd, sd_kd"  # three of the four; all four listed
    # every value of a sweep and of a list is checked; the first unknown one is named
    assert unknown_group_option(["distill=kd,sd_kdd"], small_conf).startswith("unknown distill 'sd_kdd'. Did you mean")
    assert (
        unknown_group_option(["+distill=[kd,xyz]"], small_conf)
        == "unknown distill 'xyz'. Known: dkd, kd, sd_dkd, sd_kd"
    )


def test_a_long_group_is_counted_instead_of_listed(small_conf):
    message = unknown_group_option(["pair=d/p1"], small_conf)
    assert message.startswith("unknown pair 'd/p1'. Did you mean 'd/p1")
    assert message.endswith("? Known: 13 options under conf/pair/")


def test_the_first_bad_override_is_the_one_named(small_conf):
    message = unknown_group_option(["pair=d/p99", "distill=sdkd"], small_conf)
    assert message.startswith("unknown pair 'd/p99'")


def test_twelve_options_are_still_listed_and_a_half_similar_name_is_suggested(tmp_path):
    conf = _conf(tmp_path, {f"data/set{i:02d}.yaml": "" for i in range(11)} | {"data/abcdef.yaml": ""})
    message = unknown_group_option(["data=abcxyz"], conf)  # difflib ratio 0.5 to 'abcdef': the lowest suggested
    assert message.startswith("unknown data 'abcxyz'. Did you mean 'abcdef'?")
    assert message.endswith("Known: " + ", ".join(["abcdef"] + [f"set{i:02d}" for i in range(11)]))


def test_a_value_holding_an_equals_sign_is_an_unknown_option(small_conf):
    assert unknown_group_option(["distill=kd=2"], small_conf).startswith("unknown distill 'kd=2'.")
