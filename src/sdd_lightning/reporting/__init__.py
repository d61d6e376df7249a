"""What a run leaves for people to read: summary tables and plots, region maps, model cards, provenance,
and the generated recipe table (``docs/recipes.md``).

It builds on ``catalog``, ``method`` and the file helpers; the apps and the training callbacks call it.
"""
