"""``sdd-export``: a run's student as the files people ship, with a model card.

    sdd-export outputs/train/runs/<time>                  # the run's best checkpoint -> <run>/export/
    sdd-export <run>/checkpoints/last.ckpt --dtype fp16 --output-dir ship/
    sdd-export <run> data.root=/data                      # the data moved since training

Writes ``<name>.pth`` (a plain state_dict) and ``<name>.safetensors`` (the same tensors; safetensors files hold
tensors only, so loading one never runs code), both fp32 or fp16, the student's weights alone, plus the model
card ``<name>.json`` (machine-readable; :func:`sdd_lightning.reporting.model_card.read_model_card` finds it from either
weights file) and ``<name>.md``. The card records the architecture, data set and classes, the top-1 / top-5 that
``sdd-eval`` measures on the exported file itself, the method and the teacher-student pair, the recipe of the
run (temperature, loss weights, scales M, beta, gamma, epochs, learning rate, batch size, ...), the commands that
trained and exported it, the sha256 of each weights file, and how to load it.

The data set (to measure on, and named in the card) is composed and built as ``sdd-eval`` does it, on the path
``sdd-train`` takes: Hydra composes the run's saved config with the ``data`` overrides, and
:mod:`sdd_lightning.builders` builds the data module and the student from it.

Each file is written whole or not at all, with the mode the umask gives any new file, and two exports of one
checkpoint give the same bytes (the card holds no time; the export command is recorded without ``--output-dir``).
A bad input or an output folder that cannot be written stops with exit status 2 and a short message that names
the fix, without a traceback (``SDD_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import save as safetensors_bytes

from sdd_lightning.builders import build_datamodule
from sdd_lightning.cli.evaluate import evaluate_checkpoint
from sdd_lightning.cli.messages import debug_requested
from sdd_lightning.cli.sources import (
    USER_ERRORS,
    NetworkSpec,
    Run,
    add_network_options,
    compose_config,
    find_run,
    network_specs,
    parse_arch_kwargs,
    split_inputs,
    writing,
)
from sdd_lightning.data import datamodule_name
from sdd_lightning.errors import EvalError
from sdd_lightning.reporting.model_card import CARD_FORMAT, CARD_VERSION, find_model_card, write_atomically

__all__ = ["DTYPES", "export_student", "main", "render_markdown"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


# What each method does, in words (the SD-* methods: "sd_" and one of these).
METHODS = {
    "none": "plain training with cross-entropy, no teacher",
    "kd": "KD: knowledge distillation of the teacher's softened class probabilities (Hinton et al.)",
    "dkd": "DKD: decoupled knowledge distillation, target and non-target classes weighted apart (Zhao et al.)",
    "nkd": "NKD: normalized knowledge distillation, a target term plus a softened term over the classes (Yang et al.)",
}


def _method_title(method: str | None) -> str:
    if method in METHODS:
        return METHODS[method]
    base = (method or "").removeprefix("sd_")
    if method and method.startswith("sd_") and base in METHODS:
        return (
            f"SD-{base.upper()}: scale decoupled distillation (Wei et al.), {base.upper()} on the global logits and "
            "on every region of each scale"
        )
    return method or "unknown"


def _pth_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


def _safetensors_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors file of ``state_dict`` with its header's entries sorted: safetensors writes the metadata in
    the order of a Rust hash map, which changes from run to run, so that one export would differ from the next."""
    data = safetensors_bytes(dict(state_dict), metadata=dict(metadata))
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
    return len(header).to_bytes(8, "little") + header + data[8 + size :]


def _state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The network's tensors, floating ones cast to ``dtype`` (integer buffers such as BatchNorm counters stay)."""
    return {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
    }


def _data_name(target: str) -> str:
    """The data set's name: the one its data module gives itself, else the class name without "DataModule"."""
    return datamodule_name(target) or target.rsplit(".", 1)[-1].removesuffix("DataModule").lower()


def _default_name(spec: NetworkSpec, data_target: str, run: Run | None, dtype: str) -> str:
    method = run.config.get("method") if run is not None else None
    parts = [spec.arch.replace(":", "_"), _data_name(data_target), *([method] if method not in (None, "none") else [])]
    return "-".join(parts) + ("-fp16" if dtype == "fp16" else "")


def _plain(node: Any) -> Any:
    """A config node as plain values, without Hydra's ``_target_``/``_partial_``/``_convert_`` keys."""
    if isinstance(node, Mapping):
        return {key: _plain(value) for key, value in node.items() if not str(key).startswith("_")}
    if isinstance(node, list):
        return [_plain(value) for value in node]
    return node


def _schedule(scheduler: Mapping[str, Any]) -> str:
    """The learning-rate schedule in words."""
    kind = str(scheduler.get("_target_") or "").rsplit(".", 1)[-1]
    if not kind:
        return "constant"
    if kind == "MultiStepLR":
        return f"x{scheduler.get('gamma')} at epochs {', '.join(map(str, scheduler.get('milestones') or []))}"
    if kind == "CosineAnnealingLR":
        return f"cosine, down to {scheduler.get('eta_min', 0)} at epoch {scheduler.get('T_max')}"
    return kind


def _recipe(run: Run) -> dict[str, Any]:
    """The training values of the run that a reader compares with a paper's recipe (the method's are in
    ``method.settings``)."""
    config = OmegaConf.to_container(run.config, resolve=True)
    optimizer, scheduler = config.get("optimizer") or {}, config.get("scheduler") or {}
    return {
        "epochs": config.get("epochs"),
        "batch_size": (config.get("data") or {}).get("batch_size"),
        "optimizer": str(optimizer.get("_target_", "")).rsplit(".", 1)[-1] or None,
        "lr": optimizer.get("lr"),
        "momentum": optimizer.get("momentum"),
        "weight_decay": optimizer.get("weight_decay"),
        "lr_schedule": _schedule(scheduler),
        "seed": config.get("seed"),
    }


def _recorded_command(args: Sequence[str]) -> str:
    """``sdd-export <args>`` without ``--output-dir``: where the files went is no property of them, so two exports
    of one checkpoint into two folders give the same card."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        option = arg.split("=", 1)[0]
        if len(option) > 2 and "--output-dir".startswith(option):  # argparse takes --output for it too
            skip = "=" not in arg
            continue
        kept.append(arg)
    return shlex.join(["sdd-export", *kept])


def _training_command(run: Run | None) -> str | None:
    if run is None:
        return None
    overrides = run.results.get("overrides")
    if overrides is None and (run.dir / ".hydra" / "overrides.yaml").is_file():
        overrides = list(OmegaConf.load(run.dir / ".hydra" / "overrides.yaml"))
    return None if overrides is None else shlex.join(["sdd-train", *overrides])


def _usage(name: str, arch: str, num_classes: int, kwargs: Mapping[str, Any]) -> dict[str, str]:
    options = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    build = f"build_model({arch!r}, num_classes={num_classes}{options})"
    return {
        "sdd_lightning": (
            "from sdd_lightning.models import build_model, load_weights\n\n"
            f'model = load_weights({build}, "{name}.safetensors").eval()  # or "{name}.pth"'
        ),
        "pytorch": (
            "import torch\n"
            "from safetensors.torch import load_file\n\n"
            f'state_dict = load_file("{name}.safetensors")  # or torch.load("{name}.pth", weights_only=True)\n'
            f"model = ...  # a {arch} network with these state_dict keys, e.g. sdd_lightning's {build}\n"
            "model.load_state_dict(state_dict)  # fp16 tensors are cast to the model's dtype\n"
            "model.eval()"
        ),
    }


def export_student(
    source: str | Path,
    *,
    output_dir: str | Path | None = None,
    name: str | None = None,
    dtype: str = "fp32",
    overrides: Sequence[str] = (),
    split: str = "test",
    measure: bool = True,
    device: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Writes the student of a run (or of a checkpoint) as ``.pth`` and ``.safetensors`` with its model card.

    Args:
        source: a run folder (its best checkpoint) or a checkpoint file; a file outside a run folder needs
            ``arch`` (and ``data=...`` overrides to be measured).
        output_dir: where the files go (default: ``<run>/export``, or ``./export``).
        name: the files' stem (default: ``<arch>-<data>-<method>``, ``-fp16`` added for fp16).
        dtype: ``"fp32"`` or ``"fp16"``, for both weights files.
        overrides: data overrides (``data.root=...``, ``data=<name>``), as for ``sdd-eval``.
        split: the split the card's accuracy is measured on.
        measure: measure the exported file with ``sdd-eval`` (``False``: the card's accuracy is ``None``).
        device: where to measure (default: cuda when available).
        arch, num_classes, arch_kwargs: the network, for a file outside a run folder.
        command: the command line to record (default: this process's, without ``--output-dir``).

    Returns:
        The path of the model card ``<name>.json`` (the markdown card ``<name>.md`` and the weights lie beside it).

    Raises:
        EvalError (or one of :data:`~sdd_lightning.cli.sources.USER_ERRORS`): bad input, or an output folder that
            cannot be written (no file is then left half-written).
    """
    if dtype not in DTYPES:
        raise EvalError(f"--dtype {dtype}: choose {' or '.join(DTYPES)}")
    checkpoint, run = find_run(source)
    spec = network_specs(checkpoint, run, arch=arch, num_classes=num_classes, arch_kwargs=arch_kwargs)[0]
    config = compose_config(overrides, run, find_model_card(checkpoint))
    data = config.data
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    data_classes = datamodule.num_classes
    model = spec.build(data_classes)
    classes = spec.num_classes or data_classes
    kwargs = dict(spec.kwargs)
    kwargs.pop("weights", None)

    name = name or _default_name(spec, data._target_, run, dtype)
    folder = Path(output_dir) if output_dir else (run.dir if run else Path()) / "export"
    state_dict = _state_dict(model, DTYPES[dtype])
    metadata = {"arch": spec.arch, "num_classes": str(classes), "dtype": dtype}
    weights = {
        folder / f"{name}.safetensors": ("safetensors", _safetensors_bytes(state_dict, metadata)),
        folder / f"{name}.pth": ("pytorch state_dict", _pth_bytes(state_dict)),
    }
    with writing("--output-dir DIR"):
        folder.mkdir(parents=True, exist_ok=True)
        for path, (_, data_bytes) in weights.items():
            write_atomically(path, data_bytes)
    safetensors = folder / f"{name}.safetensors"

    accuracy, class_names = None, getattr(datamodule, "class_names", None)
    if measure:
        exported = NetworkSpec("network", spec.arch, kwargs, classes, safetensors)
        report, per_class = evaluate_checkpoint([exported], config, split=split, device=device)
        accuracy = {key: report[key] for key in ("acc1", "acc5", "loss", "images", "split")}
        accuracy |= {"file": safetensors.name, "measured_with": "sdd-eval", "units": "fraction (0-1)"}
        class_names = [row["name"] for row in per_class] if any(row["name"] for row in per_class) else class_names

    distillation = run is not None and run.is_distillation
    teacher = None
    if distillation:
        node = run.config.teacher
        teacher = {
            "arch": node.arch,
            "kwargs": OmegaConf.to_container(node.kwargs, resolve=True) if node.get("kwargs") else {},
            "checkpoint": node.get("checkpoint"),
            "acc1": run.results.get("teacher/acc1"),
        }
    method = run.config.get("method") if run is not None else None
    card = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "name": name,
        "architecture": {
            "arch": spec.arch,
            "kwargs": kwargs,
            "num_classes": classes,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "data": {
            "name": data._target_.rsplit(".", 1)[-1],
            "config": OmegaConf.to_container(data, resolve=True),  # for sdd-eval, which builds the data from it
            "classes": class_names,
        },
        "accuracy": accuracy,
        "teacher": teacher,
        "method": (
            {
                "name": method,
                "title": _method_title(method),
                "settings": _plain(OmegaConf.to_container(run.config.distill, resolve=True)),
            }
            if run is not None
            else None
        ),
        "recipe": _recipe(run) if run is not None else None,
        "training": {
            "run": str(run.dir) if run else None,
            "checkpoint": str(checkpoint),
            "command": _training_command(run),
            "results": {key: run.results.get(key) for key in ("val/acc1_best", "test/acc1", "epochs", "seed")}
            if run
            else None,
            "git_commit": run.results.get("git_commit") if run else None,
        },
        "export": {
            "command": _recorded_command(sys.argv[1:]) if command is None else command,
            "dtype": dtype,
            "sdd_lightning": _version(),
        },
        "files": [
            {
                "path": path.name,
                "format": kind,
                "dtype": dtype,
                "bytes": len(data_bytes),
                "sha256": hashlib.sha256(data_bytes).hexdigest(),
            }
            for path, (kind, data_bytes) in weights.items()
        ],
        "usage": _usage(name, spec.arch, classes, kwargs),
    }
    card_path = folder / f"{name}.json"
    with writing("--output-dir DIR"):
        write_atomically(folder / f"{name}.md", render_markdown(card).encode())
        write_atomically(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return card_path


def _version() -> str:
    try:
        return metadata.version("sdd-lightning")
    except metadata.PackageNotFoundError:
        return "unknown"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _recipe_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The method and recipe of the card as (what, value) rows in words."""
    method, recipe, teacher = card["method"], card.get("recipe"), card["teacher"]
    settings = (method or {}).get("settings") or {}
    loss = settings.get("loss") or {}
    rows = [("method", _method_title((method or {}).get("name")))]  # cards of earlier versions have no title
    if teacher:
        rows.append(("teacher -> student", f"{teacher['arch']} -> {card['architecture']['arch']}"))
    if "temperature" in loss:
        rows.append(("temperature T", _number(loss["temperature"])))
    if "ce_weight" in settings:
        rows.append(
            (
                "loss weights",
                f"cross-entropy {_number(settings['ce_weight'])}, distillation {_number(settings['kd_weight'])}",
            )
        )
    if "beta" in loss:
        rows.append(("DKD alpha / beta", f"{_number(loss.get('alpha'))} / {_number(loss['beta'])}"))
    if "gamma" in loss:
        rows.append(("NKD gamma", _number(loss["gamma"])))
    if "exclude_target" in loss:
        soft = "the target class left out" if loss["exclude_target"] else "all classes, the target included (official)"
        rows.append(("NKD soft term", soft))
    if loss.get("standardize"):
        rows.append(("logit standardization", "both networks' logits z-scored per region before the loss (LS)"))
    if settings.get("warmup_epochs"):
        rows.append(("warm-up", f"the distillation term ramps up over {settings['warmup_epochs']} epochs"))
    scales = settings.get("scales")
    if scales and len(scales) > 1:
        rows.append(("scales M", "{" + ", ".join(map(str, scales)) + "} (grid sides of the regions)"))
        rows.append(
            (
                "beta (weight of complementary regions)",
                f"{_number(settings.get('complementary_weight'))} (consistent regions: "
                f"{_number(settings.get('consistent_weight'))}; consistency by {settings.get('consistency')}, "
                f"{settings.get('pooling')} pooling)",
            )
        )
    elif scales:
        rows.append(("scales M", "{1}: the global logits only"))
    if recipe:
        optimizer = f"{recipe['optimizer']}, " if recipe.get("optimizer") else ""
        extras = [f"momentum {_number(recipe['momentum'])}"] if recipe.get("momentum") is not None else []
        if recipe.get("weight_decay") is not None:
            extras.append(f"weight decay {_number(recipe['weight_decay'])}")
        rows += [
            ("epochs", str(recipe["epochs"])),
            ("batch size", str(recipe["batch_size"])),
            ("learning rate", f"{_number(recipe['lr'])} ({optimizer}{', '.join(extras)}), {recipe['lr_schedule']}"),
            ("seed", str(recipe["seed"])),
        ]
    return rows


def render_markdown(card: Mapping[str, Any]) -> str:
    """The model card as a short markdown page in words (the JSON card is the one code should read)."""
    arch, data, accuracy = card["architecture"], card["data"], card["accuracy"]
    teacher, training = card["teacher"], card["training"]
    classes = data["classes"]
    options = f" {arch['kwargs']}" if arch["kwargs"] else ""
    teacher_text = f"`{teacher['arch']}` (top-1 {_percent(teacher['acc1'])} %)" if teacher else "none"
    measured = f" on {accuracy['images']:,} {accuracy['split']} images, measured by sdd-eval" if accuracy else ""
    lines = [
        f"# {card['name']}",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{arch['arch']}`{options} ({arch['parameters']:,} parameters) |",
        f"| data set | {data['name'].removesuffix('DataModule')}, {arch['num_classes']} classes |",
        f"| top-1 / top-5 (%) | {_percent(accuracy and accuracy['acc1'])} / {_percent(accuracy and accuracy['acc5'])}"
        f"{measured} |",
        f"| method | {_method_title(card['method']['name']).split(':')[0] if card['method'] else 'unknown'} |",
        f"| teacher | {teacher_text} |",
        f"| trained with | `{training['command'] or 'unknown'}` |",
        f"| exported with | `{card['export']['command']}` ({card['export']['dtype']}) |",
        "",
    ]
    if card["method"]:
        lines += ["## How it was trained", "", "| | |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in _recipe_rows(card)]
        lines.append("")
    lines += [
        "## Files",
        "",
        "| file | format | bytes | sha256 |",
        "|---|---|---|---|",
        *(f"| {f['path']} | {f['format']}, {f['dtype']} | {f['bytes']:,} | `{f['sha256']}` |" for f in card["files"]),
        "",
        "## Load it",
        "",
        "With sdd_lightning:",
        "",
        "```python",
        card["usage"]["sdd_lightning"],
        "```",
        "",
        "With plain PyTorch:",
        "",
        "```python",
        card["usage"]["pytorch"],
        "```",
        "",
    ]
    if classes:
        lines += ["## Classes", "", ", ".join(f"{index}: {name}" for index, name in enumerate(classes)), ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdd-export",
        description="Export a run's student as .pth and .safetensors with a model card (JSON and markdown).",
        epilog="Data overrides (for measuring the accuracy): data.root=..., data=<name>, data.<key>=<value>.",
    )
    parser.add_argument("inputs", nargs="+", help="RUN folder or CHECKPOINT, and data overrides")
    parser.add_argument("--output-dir", type=Path, help="where the files go (default: <run>/export)")
    parser.add_argument("--name", help="file stem (default: <arch>-<data>-<method>)")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    parser.add_argument("--split", default="test", help="split the card's accuracy is measured on")
    parser.add_argument("--no-measure", action="store_true", help="write the card without measuring the accuracy")
    add_network_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sdd-export`` entry point: prints the files, their sha256 and the top-1; returns the exit status.

    Bad input and an output folder that cannot be written print a short message without a traceback and
    return 2 (``SDD_DEBUG=1`` shows the traceback instead).
    """
    args = _parser().parse_intermixed_args(argv)
    try:
        source, overrides = split_inputs(args.inputs)
        if source is None:
            raise EvalError("give the run folder or checkpoint to export")
        card_path = export_student(
            source,
            output_dir=args.output_dir,
            name=args.name,
            dtype=args.dtype,
            overrides=overrides,
            split=args.split,
            measure=not args.no_measure,
            device=args.device,
            arch=args.arch,
            num_classes=args.num_classes,
            arch_kwargs=parse_arch_kwargs(args.arch_kwarg),
            command=_recorded_command(sys.argv[1:] if argv is None else argv),
        )
    except (EvalError, *USER_ERRORS) as error:
        if debug_requested():
            raise
        print(f"sdd-export: error: {error}", file=sys.stderr)
        return 2
    card = json.loads(card_path.read_text())
    for entry in card["files"]:
        print(f"{card_path.parent / entry['path']}  sha256 {entry['sha256']}")
    accuracy = card["accuracy"]
    top1 = f"top-1 {_percent(accuracy['acc1'])} % on {accuracy['split']}" if accuracy else "accuracy not measured"
    print(f"{card['name']}: {top1}; model card {card_path} (and .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
