"""Model cards: the JSON file beside exported weights that says what they are and how well they do.

``sdd-export`` writes ``<stem>.pth`` and ``<stem>.safetensors`` with ``<stem>.json`` (and ``<stem>.md``) beside them.
:func:`read_model_card` finds and reads the card of a weights file; ``card["accuracy"]["acc1"]`` is the top-1
(a fraction) that ``sdd-eval`` measured on the exported weights, ``card["architecture"]`` says how to build the
network (``build_model(arch, num_classes, **kwargs)``) and ``card["data"]["config"]`` which data module it was
measured on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CARD_FORMAT", "CARD_VERSION", "find_model_card", "model_card_path", "read_model_card"]

CARD_FORMAT = "sdd-lightning model card"
CARD_VERSION = 1


def model_card_path(weights_path: str | os.PathLike) -> Path:
    """Where the card of a weights file lives: the same folder and stem, suffix ``.json``."""
    return Path(weights_path).with_suffix(".json")


def find_model_card(weights_path: str | os.PathLike) -> dict[str, Any] | None:
    """The card beside ``weights_path`` when there is one, else ``None`` (a JSON file of another kind is ignored)."""
    path = model_card_path(weights_path)
    if Path(weights_path).suffix == ".json" or not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) and card.get("format") == CARD_FORMAT else None


def read_model_card(weights_path: str | os.PathLike) -> dict[str, Any]:
    """Reads the model card of an exported weights file (``<stem>.json`` beside ``<stem>.safetensors`` / ``.pth``).

    Meant for code that checks weights before using them, e.g. comparing a teacher's measured top-1 with
    ``card["accuracy"]["acc1"]`` (a fraction; ``card["accuracy"]`` is ``None`` when the export did not measure it).

    Raises:
        FileNotFoundError: no card beside the weights.
        ValueError: the file is not a model card of this format (or a newer version of it).
    """
    path = model_card_path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no model card for {str(weights_path)!r}: expected {str(path)!r} (sdd-export writes it)"
        )
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"model card {str(path)!r} is not valid JSON ({error}); export the weights again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ValueError(f"{str(path)!r} is not an {CARD_FORMAT} (its 'format' field is missing or different)")
    if card.get("format_version", 0) > CARD_VERSION:
        raise ValueError(
            f"model card {str(path)!r} has format_version {card['format_version']}; this version of sdd_lightning "
            f"reads up to {CARD_VERSION}: upgrade sdd_lightning"
        )
    return card
