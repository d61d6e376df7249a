"""The command-line apps, thin layers over the library; each ``main``/``cli`` returns its exit status.

- ``train``: ``sdd-train`` (Hydra), one run or a sweep.
- ``evaluate``: ``sdd-eval``, accuracy and per-region agreement of a run or weights file.
- ``export``: ``sdd-export``, a run's student (or teacher) as safetensors with a model card.
- ``summary``: ``sdd-summary``, a table and plots of many runs.
- ``quickstart``: ``make train``, a teacher and a three-seed KD/SD-KD sweep.
- ``messages``: the short messages, exit statuses and start/result lines every app shares.
- ``sources``: finding a run, its checkpoint and saved config; composing that config with data overrides (Hydra).

Apps sit at the top: nothing in the library imports them.
"""
