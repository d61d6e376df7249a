"""The method: Scale Decoupled Distillation's head and its losses, free of Lightning.

- ``heads``: ``ScaleDecoupledHead`` pools the final feature map over the regions of each scale and applies the
  network's own classifier to every region (``Pooling``: how a region is pooled).
- ``losses``: the per-sample base losses (KD, DKD, NKD, with optional logit standardisation) and the
  scale-decoupled reduction (``ScaleDecoupledLoss``, ``sdd_loss``, ``complementary_mask``).

Nothing here imports the training, the apps or the reports; it depends on torch only.
"""
