"""The campaign tools' tests: ``tools/`` (the ``campaign`` package, the scripts) and the suite's helpers in ``tests/``
are importable from here."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT / "tools", ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
