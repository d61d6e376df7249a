"""The one home of the suite's helpers.

- ``training``: ``SmallNet`` and ``quiet_trainer``, the one quiet ``Trainer`` of the suite.
- ``app``: config composition, the subprocess environment and runs of ``sdd-train``.
- ``fixtures``: tiny data sets written in their real on-disk formats (CIFAR-100 pickles, ImageNet and CUB folders).
- ``faults``: processes killed or failing on purpose (DDP, signals).
- ``extensions``, ``probes``: a subclass and callbacks that configs name by ``_target_`` in subprocess runs.
- ``oracle_rules``: the official training step's rules, replayed by ``training/test_oracle.py``.
- ``wandb_records``: reading the records an offline W&B run wrote.
- ``mutation_support``: the pytest plugin ``make mutation`` loads.
"""
