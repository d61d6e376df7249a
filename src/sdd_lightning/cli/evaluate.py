"""``sdd-eval``: top-1, top-5, loss and per-class accuracy of any network checkpoint on any split of a data set.

    sdd-eval outputs/train/runs/<time>                    # a run's best checkpoint, on the run's data, test split
    sdd-eval <run>/checkpoints/last.ckpt --part teacher   # the teacher inside a distillation checkpoint
    sdd-eval <run> --regions                              # + local accuracy per scale, complementary fractions
    sdd-eval resnet32x4_vanilla/ckpt_epoch_240.pth --arch resnet32x4 data=cifar100 data.root=/data
    sdd-eval export/student.safetensors                   # the model card beside it names the network and data
    sdd-eval --arch imagenet_resnet50 --weights IMAGENET1K_V1 data=imagenet data.root=/data/imagenet

The checkpoint may be a run folder (its best checkpoint), a Lightning ``.ckpt`` of this package, an
mdistiller/CRD ``.pth``, a plain or exported state_dict (``.pth`` / ``.safetensors``), or nothing with
``--weights`` (torchvision's pretrained weights). The data set is the run's own (its resolved config) or the
card's, changed by ``data.<key>=...`` overrides, or any ``conf/data`` option chosen with ``data=<name>``.
Config to objects takes ``sdd-train``'s path: Hydra composes the saved config with the overrides
(:func:`~sdd_lightning.cli.sources.compose_config`), and :mod:`sdd_lightning.builders` builds the data module and
the networks from it.
The report is printed as JSON and written with a per-class CSV beside it; accuracies are fractions (0-1).
``--regions`` measures the local predictions on the scales the run trained with (its ``distill.scales``).
Bad input (a missing or unreadable file, another architecture or class count, missing data, an output that
cannot be written) stops with exit status 2 and a short message that names the fix, without a traceback
(``SDD_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sdd_lightning.builders import build_datamodule
from sdd_lightning.cli.messages import debug_requested
from sdd_lightning.cli.sources import (
    SPLITS,
    USER_ERRORS,
    NetworkSpec,
    Run,
    add_network_options,
    compose_config,
    find_run,
    network_specs,
    parse_arch_kwargs,
    split_inputs,
    split_loader,
    writing,
)
from sdd_lightning.errors import EvalError
from sdd_lightning.method.heads import ScaleDecoupledHead
from sdd_lightning.method.losses import Consistency, complementary_mask
from sdd_lightning.models import get_classifier
from sdd_lightning.reporting.model_card import find_model_card, write_atomically

__all__ = ["evaluate_checkpoint", "evaluate_command", "evaluate_networks", "main", "write_report"]

DEFAULT_SCALES = (1, 2, 4)


# ------------------------------------------------------------------------------------------ evaluating


class _Tally:
    """Running counts of one network over the batches of a split."""

    def __init__(self, num_classes: int, head: ScaleDecoupledHead | None) -> None:
        self.images = torch.zeros(num_classes, dtype=torch.long)
        self.correct = torch.zeros(num_classes, dtype=torch.long)
        self.correct5 = 0
        self.loss = 0.0
        self.head = head
        if head is not None:
            self.scale_correct = torch.zeros(len(head.scales), dtype=torch.long)
            self.complementary = {rule: 0 for rule in Consistency}

    def update(self, logits: torch.Tensor, local: torch.Tensor | None, y: torch.Tensor) -> None:
        num_classes = len(self.images)
        hit = logits.argmax(1) == y
        self.images += torch.bincount(y, minlength=num_classes).cpu()
        self.correct += torch.bincount(y[hit], minlength=num_classes).cpu()
        self.correct5 += int((logits.topk(min(5, num_classes), 1).indices == y[:, None]).any(1).sum())
        self.loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        if local is None:
            return
        region_hit = local.argmax(-1) == y[:, None]  # (B, R)
        start = 0
        for index, scale in enumerate(self.head.scales):
            self.scale_correct[index] += int(region_hit[:, start : start + scale * scale].sum())
            start += scale * scale
        for rule in Consistency:
            self.complementary[rule] += int(complementary_mask(local, y, rule).sum())

    def summary(self) -> dict[str, Any]:
        images = int(self.images.sum())
        if images == 0:
            raise EvalError("the split has no images")
        result: dict[str, Any] = {
            "images": images,
            "acc1": int(self.correct.sum()) / images,
            "acc5": self.correct5 / images,
            "loss": self.loss / images,
        }
        if self.head is not None:
            scales = self.head.scales
            result["acc1_by_scale"] = {
                str(scale): int(self.scale_correct[i]) / (images * scale * scale) for i, scale in enumerate(scales)
            }
            local_regions = images * (self.head.num_regions - 1)
            result["complementary_fraction"] = {
                rule.value: count / local_regions if local_regions else 0.0
                for rule, count in self.complementary.items()
            }
        return result

    def per_class(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        return [
            {
                "class": k,
                "name": names[k] if names is not None and k < len(names) else "",
                "images": int(self.images[k]),
                "correct": int(self.correct[k]),
                "acc1": int(self.correct[k]) / int(self.images[k]) if self.images[k] else None,
            }
            for k in range(len(self.images))
        ]


def _forward(
    model: nn.Module, x: torch.Tensor, head: ScaleDecoupledHead | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Global logits (the network's own output) and, with a head, its local logits from the same feature map."""
    if head is None:
        return model(x), None
    feature_map = model.forward_features(x)
    forward_head = getattr(model, "forward_head", None)
    logits = forward_head(feature_map) if forward_head is not None else model(x)
    return logits, head(feature_map, get_classifier(model))


@torch.inference_mode()
def evaluate_networks(
    networks: Mapping[str, nn.Module],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    head: ScaleDecoupledHead | None = None,
) -> dict[str, _Tally]:
    """Runs every network over the batches once (fp32, eval mode) and counts hits per class, top-5 and loss.

    With ``head``, also the hits of every region's local prediction per scale and the complementary regions
    under both consistency rules, each network judged by its own predictions.
    """
    tallies = {name: _Tally(num_classes, head) for name in networks}
    for model in networks.values():
        model.to(device).eval()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for name, model in networks.items():
            tallies[name].update(*_forward(model, x, head), y)
    return tallies


def _default_regions(run: Run | None) -> tuple[tuple[int, ...], str]:
    """The scales and pooling ``--regions`` uses for a run: the ones it trained with (``distill.scales``, the
    saved config's). Only a run without local terms (KD, DKD, NKD, plain training: ``[1]``) has no regions of its
    own; it is measured on its pair's SD scale set; a file outside a run on 1,2,4."""
    config = run.config if run is not None else {}
    distill = config.get("distill") or {}
    scales = distill.get("scales") or [1]
    if len(scales) < 2:
        scales = (config.get("pair_settings") or {}).get("sd_scales") or DEFAULT_SCALES
    return tuple(scales), distill.get("pooling", "exact")


def evaluate_checkpoint(
    specs: Sequence[NetworkSpec],
    config: DictConfig,
    *,
    split: str = "test",
    regions: bool = False,
    scales: Sequence[int] | None = None,
    pooling: str = "exact",
    device: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluates ``specs`` (the first is the one reported) on ``split`` of the data set of ``config``.

    ``config`` is a composed config (:func:`~sdd_lightning.cli.sources.compose_config`); its data module is built
    by :func:`sdd_lightning.builders.build_datamodule`, as ``sdd-train`` builds it.

    Returns:
        The report (JSON-ready; accuracies as fractions) and the first network's per-class rows.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if "pin_memory" in config.data and torch.device(device).type != "cuda":
        config = OmegaConf.merge(config, {"data": {"pin_memory": False}})  # page-locked memory only helps GPU copies
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    networks = {spec.role: spec.build(datamodule.num_classes) for spec in specs}  # bad weights fail before data loads
    loader = split_loader(datamodule, split)
    head = ScaleDecoupledHead(scales or DEFAULT_SCALES, pooling) if regions else None
    tallies = evaluate_networks(networks, loader, datamodule.num_classes, device=device, head=head)
    first = specs[0]
    summary = tallies[first.role].summary()
    report: dict[str, Any] = {
        "checkpoint": str(first.checkpoint) if first.checkpoint else None,
        "part": first.role,
        "arch": first.arch,
        "arch_kwargs": first.kwargs,
        "num_classes": datamodule.num_classes,
        "data": type(datamodule).__name__,
        "split": split,
        "images": summary["images"],
        "acc1": summary["acc1"],
        "acc5": summary["acc5"],
        "loss": summary["loss"],
        "accuracy_units": "fraction (0-1)",
        "device": str(device),
    }
    if head is not None:
        report["regions"] = {
            "scales": list(head.scales),
            "pooling": head.pooling.value,
            "networks": {role: tally.summary() for role, tally in tallies.items()},
        }
    return report, tallies[first.role].per_class(getattr(datamodule, "class_names", None))


def write_report(report: dict[str, Any], per_class: list[dict[str, Any]], output: Path) -> None:
    """Writes the report to ``output`` (JSON) and the per-class rows beside it (``<stem>-per_class.csv``).

    Each file is written whole or not at all; an output that cannot be written raises :class:`EvalError`.
    """
    csv_path = output.with_name(output.stem + "-per_class.csv")
    report["per_class_csv"] = str(csv_path)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["class", "name", "images", "correct", "acc1"])
    writer.writeheader()
    writer.writerows(per_class)
    with writing("--output FILE"):
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(csv_path, table.getvalue().encode())
        write_atomically(output, (json.dumps(report, indent=2) + "\n").encode())


# ---------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdd-eval",
        description="Evaluate a network checkpoint on a split of a data set: top-1, top-5, loss, per-class accuracy.",
        epilog="Data overrides: data=<cifar100|cub200|imagenet|synthetic>, data.root=..., data.<key>=<value>.",
    )
    parser.add_argument("inputs", nargs="*", help="CHECKPOINT (file or run folder) and data overrides")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--part", default="student", choices=("student", "teacher"), help="of a distillation .ckpt")
    add_network_options(parser)
    parser.add_argument("--weights", help="torchvision pretrained weights (e.g. IMAGENET1K_V1), without a checkpoint")
    parser.add_argument("--regions", action="store_true", help="local accuracy per scale, complementary fractions")
    parser.add_argument(
        "--scales",
        help="grid sides for --regions, e.g. 1,2,4 (default: those the run trained with; for a run without "
        "regions its pair's SD set; else 1,2,4)",
    )
    parser.add_argument("--pooling", choices=("exact", "hierarchical"), help="for --regions (default: the run's)")
    parser.add_argument("--output", type=Path, help="report file (default: <run>/eval/ or ./eval/<name>.json)")
    return parser


def _default_output(checkpoint: Path | None, run: Run | None, role: str, split: str, arch: str) -> Path:
    name = f"{checkpoint.stem if checkpoint else arch.replace(':', '_')}-{role}-{split}.json"
    return (run.dir if run is not None else Path()) / "eval" / name


def evaluate_command(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What ``sdd-eval <argv>`` does, without printing: evaluates, writes the report and returns it.

    Raises:
        EvalError (or one of :data:`~sdd_lightning.cli.sources.USER_ERRORS`): bad input, or an unwritable output.
    """
    args = _parser().parse_intermixed_args(argv)
    checkpoint_arg, overrides = split_inputs(args.inputs)
    checkpoint, run = find_run(checkpoint_arg) if checkpoint_arg else (None, None)
    if checkpoint is not None and args.weights:
        raise EvalError("--weights loads torchvision's pretrained weights: give either a checkpoint or --weights")
    arch_kwargs = parse_arch_kwargs(args.arch_kwarg) | ({"weights": args.weights} if args.weights else {})
    specs = network_specs(
        checkpoint,
        run,
        part=args.part,
        arch=args.arch,
        num_classes=args.num_classes,
        arch_kwargs=arch_kwargs,
        both_parts=args.regions,
    )
    card = find_model_card(checkpoint) if checkpoint is not None else None
    config = compose_config(overrides, run, card)
    run_scales, run_pooling = _default_regions(run)
    try:
        scales = tuple(int(s) for s in args.scales.split(",")) if args.scales else run_scales
    except ValueError:
        raise EvalError(f"--scales {args.scales}: expected grid sides such as 1,2,4") from None
    report, per_class = evaluate_checkpoint(
        specs,
        config,
        split=args.split,
        regions=args.regions,
        scales=scales,
        pooling=args.pooling or run_pooling,
        device=args.device,
    )
    output = args.output or _default_output(checkpoint, run, specs[0].role, args.split, specs[0].arch)
    write_report(report, per_class, output)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sdd-eval`` entry point: prints the report as JSON; returns the exit status (2: bad input).

    Bad input prints one message without a traceback (``SDD_DEBUG=1`` shows the traceback instead).
    """
    try:
        report = evaluate_command(argv)
    except (EvalError, *USER_ERRORS) as error:
        if debug_requested():
            raise
        print(f"sdd-eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
