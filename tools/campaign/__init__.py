"""The GPU reproduction campaign: a committed ledger of stages, a lease runner, and the merge of what came back.

``tools/gpu_lease.py`` is the command line (``next``, ``merge``, ``table``, ``status``); docs/reproduction.md
says how a lease runs. Modules: :mod:`.ledger` (the ledger's layout and checks), :mod:`.schedule` (what fits a
lease), :mod:`.clock` (the callback that times runs and probes) and :mod:`.measure` (its files as measurements),
:mod:`.runner` (``next``) with :mod:`.children` (its processes) and :mod:`.outbox` (``$OUT`` and its limits),
:mod:`.merge` and :mod:`.report` (the ledger into ``weights/`` and the tables).
"""
