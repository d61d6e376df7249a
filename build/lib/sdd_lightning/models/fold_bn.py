"""Folding BatchNorm into the convolution before it, for a frozen network in eval mode.

In eval mode a BatchNorm2d is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``;
when it directly follows a Conv2d whose output nothing else reads, the two compose into one convolution
with rescaled weights and a bias. A frozen distillation teacher then runs one operator where it ran two and
reads its activations from memory once less per layer. The result is exact up to float rounding.

The conv -> BatchNorm pairs are found by running the network once on an example input and recording the
autograd graph: a pair is folded only when the BatchNorm's input *is* the convolution's output (nothing in
between, not even an in-place ReLU) and that output has no other consumer (e.g. a residual sum or a
concatenation that also reads it). Tracing a real call, rather than ``torch.fx`` symbolic tracing, also
works for forwards with Python control flow on shapes (the CIFAR VGG's Tiny-ImageNet branch), and needs no
naming convention. The folded convolution replaces the original one under the same name and the BatchNorm
becomes an ``nn.Identity``, so ``forward``, ``forward_features`` and ``get_classifier`` keep working; the
state_dict loses the BatchNorm entries and gains convolution biases.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["find_conv_bn_pairs", "fold_batchnorm"]


def _default_example_input(model: nn.Module) -> torch.Tensor:
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    return torch.zeros(2, channels, 32, 32, device=device, dtype=dtype)


def _graph_references(roots: list[torch.autograd.graph.Node]) -> dict[torch.autograd.graph.Node, int]:
    """How many edges of the autograd graph (reachable from ``roots``) point at each node."""
    references: dict[torch.autograd.graph.Node, int] = defaultdict(int)
    seen: set[torch.autograd.graph.Node] = set()
    stack = list(roots)
    for root in roots:
        references[root] += 1  # the output itself is a consumer
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                references[child] += 1
                stack.append(child)
    return references


def find_conv_bn_pairs(model: nn.Module, example_input: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """Names ``(conv, batchnorm)`` of the pairs that :func:`fold_batchnorm` would fold.

    Runs ``model.forward_features`` (or ``model`` itself when it has none) once on ``example_input``
    (default: two zero images of 32x32 with the first convolution's input channels) in eval mode.
    """
    was_training = model.training
    model.eval()
    names = {module: name for name, module in model.named_modules()}
    conv_outputs: dict[nn.Module, list[torch.autograd.graph.Node]] = defaultdict(list)
    bn_inputs: dict[nn.Module, list[torch.autograd.graph.Node | None]] = defaultdict(list)
    handles = []

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        conv_outputs[module].append(output.grad_fn)

    def before_bn(module: nn.Module, args: tuple) -> None:
        bn_inputs[module].append(args[0].grad_fn if isinstance(args[0], torch.Tensor) else None)

    for module in model.modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv))
        elif type(module) is nn.BatchNorm2d:
            handles.append(module.register_forward_pre_hook(before_bn))
    x = _default_example_input(model) if example_input is None else example_input
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            run = getattr(model, "forward_features", model)
            output = run(x)
            outputs = output if isinstance(output, list | tuple) else [output]
            roots = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
            references = _graph_references(roots)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    producer = {node: conv for conv, nodes in conv_outputs.items() for node in nodes}
    pairs = []
    paired_convs: dict[nn.Module, nn.Module] = {}
    for bn, inputs in bn_inputs.items():
        convs = {producer.get(node) for node in inputs}
        if len(convs) != 1 or None in convs:
            continue  # some call of this BatchNorm does not read a convolution's output directly
        (conv,) = convs
        # every call of the convolution must feed this BatchNorm, and nothing else may read its output
        if len(conv_outputs[conv]) != len(inputs) or any(references.get(n, 0) != 1 for n in conv_outputs[conv]):
            continue
        if conv in paired_convs or bn.running_mean is None or bn.running_var is None:
            continue  # without running statistics, eval-mode BatchNorm normalises with batch statistics
        paired_convs[conv] = bn
        pairs.append((names[conv], names[bn]))
    return pairs


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """Folds every BatchNorm2d that directly follows a Conv2d into that convolution, in place.

    Meant for a frozen network (a distillation teacher): the model is put in eval mode and must stay there,
    because the folded convolution bakes in the running statistics. Uses torch's own
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``; the folded convolution keeps the original's
    ``requires_grad`` and the BatchNorm is replaced by ``nn.Identity``.

    Args:
        model: a network; ``forward_features`` is traced when it exists, else ``forward``.
        example_input: one input batch used to trace the network (default: two zero 32x32 images); give one
            of the real resolution when the network's structure depends on it.

    Returns:
        ``model`` itself, folded and in eval mode.
    """
    model.eval()
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model  # nothing to fold (e.g. a vision transformer): no trial run, whatever input size it takes
    pairs = find_conv_bn_pairs(model, example_input)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn)
        fused.weight.requires_grad_(conv.weight.requires_grad)
        fused.bias.requires_grad_(conv.weight.requires_grad)
        _set_submodule(model, conv_name, fused)
        _set_submodule(model, bn_name, nn.Identity())
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
