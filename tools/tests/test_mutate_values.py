"""tools/mutate_values.py: which config values and constructor defaults become which mutants (no tests run)."""

from __future__ import annotations

import mutate_values as mv
import pytest
import yaml
from omegaconf import OmegaConf

CONFIG = """\
# @package _global_
defaults:
  - override /data: cifar100
  - _self_
epochs: 240
optimizer:
  _target_: torch.optim.SGD
  lr: 0.05  # a comment stays
  weight_decay: 5.0e-4
  nesterov: false
scheduler:
  milestones: [150, 180, 210]
warmup_epochs: 0
run_name: cifar100-${method}
beta: ${pair_settings.dkd_beta}
quoted: "4"
checkpoint: null
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, False), (False, True), (4, 8), (0, 1), (-3, -6), (0.05, 0.1), (0.0, 1.0), (5.0e-4, 1.0e-3)],
)
def test_a_value_changes_once_and_keeps_its_type(value, expected):
    assert mv.changed(value) == expected and type(mv.changed(value)) is type(value)


@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (8, "8"), (0.1, "0.1"), (1e-05, "1.0e-05"), (2e20, "2.0e+20")]
)
def test_a_yaml_literal_reads_back_as_the_same_value_and_type(value, text):
    assert mv.yaml_literal(value) == text
    read = OmegaConf.create(f"x: {text}").x
    assert read == value and type(read) is type(value)


def test_every_number_and_boolean_of_a_config_becomes_one_mutant():
    mutants = mv.yaml_mutants(CONFIG, "conf/recipe/x.yaml")
    got = [(m.where, m.line, m.original, m.mutated) for m in mutants]
    assert got == [
        ("epochs", 5, "240", "480"),
        ("optimizer.lr", 8, "0.05", "0.1"),
        ("optimizer.weight_decay", 9, "5.0e-4", "0.001"),
        ("optimizer.nesterov", 10, "false", "true"),
        ("scheduler.milestones[0]", 12, "150", "300"),
        ("scheduler.milestones[1]", 12, "180", "360"),
        ("scheduler.milestones[2]", 12, "210", "420"),
        ("warmup_epochs", 13, "0", "1"),
    ]  # not: the defaults list, strings, interpolations, a quoted number, null
    assert {m.unit for m in mutants} == {"conf/recipe/x.yaml"} and {m.kind for m in mutants} == {"yaml"}


def _flat(node, path=""):
    """A config's leaves by key path, as yaml_mutants names them (``a.b``, ``a.list[1]``)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{path}.{key}" if path else key).items()}
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in _flat(value, f"{path}[{i}]").items()}
    return {path: node}


def test_a_yaml_mutant_changes_that_value_and_nothing_else():
    before = _flat(yaml.load(CONFIG, Loader=mv._yaml_loader()))
    for mutant in mv.yaml_mutants(CONFIG, "f.yaml"):
        text = mutant.apply(CONFIG)
        assert "# a comment stays" in text and text.count("\n") == CONFIG.count("\n")
        after = _flat(yaml.load(text, Loader=mv._yaml_loader()))
        assert {k for k in before if after[k] != before[k]} == {mutant.where}
        assert after[mutant.where] == mv.changed(before[mutant.where])


def test_a_mutant_refuses_a_file_that_changed_under_it():
    mutant = mv.yaml_mutants(CONFIG, "f.yaml")[0]
    with pytest.raises(ValueError, match="expected '240'"):
        mutant.apply(CONFIG.replace("epochs: 240", "epochs: 241"))


SOURCE = """\
class Loss:
    def __init__(self, temperature: float = 4.0, *, standardize: bool = False, name: str = "kd") -> None:
        self.temperature = temperature


class DataModule(Base):
    def __init__(self, root="data", scales=(1, 2, 4), padding: int = 4, shift=-1, **options) -> None:
        super().__init__(root, padding=padding)

    def helper(self, n=3):
        return n


class Other:
    def __init__(self, x=7):
        pass
"""


def test_the_number_and_boolean_defaults_of_the_named_constructors_become_mutants():
    mutants = mv.default_mutants(SOURCE, "src/pkg/m.py", "pkg.m", ["Loss", "DataModule"])
    got = [(m.where, m.line, m.original, m.mutated, m.unit) for m in mutants]
    assert got == [
        ("Loss.__init__(temperature)", 2, "4.0", "8.0", "pkg.m.Loss.__init__"),
        ("Loss.__init__(standardize)", 2, "False", "True", "pkg.m.Loss.__init__"),
        ("DataModule.__init__(scales[0])", 7, "1", "2", "pkg.m.DataModule.__init__"),
        ("DataModule.__init__(scales[1])", 7, "2", "4", "pkg.m.DataModule.__init__"),
        ("DataModule.__init__(scales[2])", 7, "4", "8", "pkg.m.DataModule.__init__"),
        ("DataModule.__init__(padding)", 7, "4", "8", "pkg.m.DataModule.__init__"),
        ("DataModule.__init__(shift)", 7, "-1", "-2", "pkg.m.DataModule.__init__"),
    ]  # not: strings, other methods, classes not named
    padding = mutants[5]
    assert "padding: int = 8, shift=-1" in padding.apply(SOURCE)
    compile(padding.apply(SOURCE), "m.py", "exec")


def test_a_default_after_non_ascii_text_is_found_by_characters():
    source = 'class A:\n    def __init__(self, label="α→β", gain=2.0):\n        pass\n'
    (mutant,) = mv.default_mutants(source, "a.py", "a", ["A"])
    assert mutant.original == "2.0" and "gain=4.0" in mutant.apply(source)


def test_targets_are_read_anywhere_in_a_file_and_only_for_the_package():
    text = """\
distill:
  _target_: sdd_lightning.training.module.DistillationModule
  loss:
    _target_: sdd_lightning.method.losses.KDLoss
optimizer:
  _target_: torch.optim.SGD
"""
    assert mv.yaml_targets(text) == [
        "sdd_lightning.training.module.DistillationModule",
        "sdd_lightning.method.losses.KDLoss",
    ]


def test_only_the_recipe_groups_are_in_scope():
    assert mv.in_scope("pair/cifar100/res32x4_shv1.yaml") and mv.in_scope("pair_method/cifar100/x/sd_nkd.yaml")
    assert not any(mv.in_scope(f) for f in ("trainer/gpu.yaml", "logger/csv.yaml", "callbacks/default.yaml"))


def test_the_selection_by_name_kind_and_limit():
    mutants = mv.yaml_mutants(CONFIG, "conf/recipe/x.yaml") + mv.default_mutants(SOURCE, "m.py", "m", ["Loss"])
    assert [m.where for m in mv.select(mutants, ["milestones"], "all", None)] == [
        f"scheduler.milestones[{i}]" for i in range(3)
    ]
    assert [m.kind for m in mv.select(mutants, [], "default", None)] == ["default", "default"]
    assert len(mv.select(mutants, ["*x.yaml:optimizer.*"], "all", 2)) == 2
    assert mv.select(mutants, ["nothing like it"], "all", None) == []


def test_the_table_counts_each_status_per_file():
    a, b = mv.yaml_mutants(CONFIG, "a.yaml")[:2]
    results = [mv.Result(a, "killed"), mv.Result(b, "survived"), mv.Result(a, "no tests")]
    lines = mv.table(results).splitlines()
    assert lines[2] == "| a.yaml | 3 | 1 | 1 | 0 | 1 | 0 | 33.3% |"
    assert lines[-1] == "| **all** | 3 | 1 | 1 | 0 | 1 | 0 | 33.3% |"
