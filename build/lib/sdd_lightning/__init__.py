"""Scale Decoupled Distillation (Wei, Luo, Luo, CVPR 2024) for PyTorch Lightning."""

__version__ = "0.1.0"
