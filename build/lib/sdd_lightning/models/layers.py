"""Small building blocks shared by several networks: conv-BN(-ReLU) stacks and weight initialisation."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn", "init_weights", "reset_to_default_init"]


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    groups: int = 1,
    relu: bool = True,
) -> nn.Sequential:
    """A bias-free convolution with "same" padding, BatchNorm and (optionally) ReLU, as one ``nn.Sequential``.

    The state_dict keys are ``0.weight`` (convolution) and ``1.*`` (BatchNorm), as in the RepDistiller /
    mdistiller MobileNets that this helper rebuilds.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, *, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """Initialises a network the way the RepDistiller / mdistiller CIFAR code does.

    Convolutions get He-normal weights with fan-out scaling (``std = sqrt(2 / (k * k * out_channels))``) and
    zero biases; BatchNorm layers start as the identity. Linear layers keep PyTorch's default unless
    ``linear_std`` is given (weights ``N(0, linear_std)``, zero bias: VGG, MobileNetV2) or ``zero_linear_bias``
    is set (WRN). Networks built on the meta device (shapes only) are left alone.
    """
    if any(parameter.is_meta for parameter in model.parameters()):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if (linear_std is not None or zero_linear_bias) and module.bias is not None:
                nn.init.zeros_(module.bias)


def reset_to_default_init(*modules: nn.Module) -> None:
    """Gives every layer inside ``modules`` PyTorch's own default initialisation again.

    The official CUB-200-2011 code builds a CIFAR network, initialises it, and then replaces its stem (and, for
    some networks, its classifier) with new layers, which therefore keep PyTorch's default initialisation; the
    networks here build those layers in place and call this to match. Meta-device layers are left alone.
    """
    for module in modules:
        if any(parameter.is_meta for parameter in module.parameters()):
            continue
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
