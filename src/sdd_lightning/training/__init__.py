"""Training: the two LightningModules, their callbacks, checkpointing and resume.

- ``module``: ``DistillationModule`` (frozen teacher, student, scale-decoupled head and loss) and
  ``ClassificationModule`` (a teacher or baseline trained on its own).
- ``callbacks``: every callback a run uses (health, resume, logs, region maps).
- ``checkpointing``: atomic checkpoint files, clean stops on signals, the resume checks.
- ``loggers``: CSV, TensorBoard and W&B loggers that continue a resumed run where it stopped.
- ``run_lock``: one run per folder.
- ``teacher_cache``: the exact cache of the frozen teacher's logits per augmented view.

It builds on ``method``, ``models`` and ``data``; it never imports the apps (``cli``).
"""
