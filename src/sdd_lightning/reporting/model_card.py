"""Model cards: the JSON file beside exported weights that says what they are and how well they do.

``sdd-export`` writes ``<stem>.pth`` and ``<stem>.safetensors`` with ``<stem>.json`` (and ``<stem>.md``) beside them.
:func:`read_model_card` finds and reads the card of a weights file; ``card["accuracy"]["acc1"]`` is the top-1
(a fraction) that ``sdd-eval`` measured on the exported weights, ``card["architecture"]`` says how to build the
network (``build_model(arch, num_classes, **kwargs)``) and ``card["data"]["config"]`` which data module it was
measured on.

:func:`write_atomically` is how ``sdd-export``, ``sdd-eval`` and ``sdd-summary`` write their files: whole or not
at all, with the mode the umask gives any new file; :func:`unwritable_output` turns the error of an output that
cannot be written (no permission, a read-only or full disk, a file where a folder should be) into two lines that
name the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "find_model_card",
    "model_card_path",
    "read_model_card",
    "unwritable_output",
    "write_atomically",
]

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


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename.

    ``path`` is then either its old self or the whole new file, never a part of it, and no temporary is left
    behind on an error. The file gets the mode the umask gives any new file (0o644 under umask 022). An
    ``OSError`` names ``path`` (its ``filename``), not the temporary.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError):
            error.filename, error.filename2 = str(path), None
        raise


_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_IN_THE_WAY = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}  # a file where a folder should be, or the reverse


def unwritable_output(error: BaseException, option: str) -> str | None:
    """Two lines for an output file or folder that cannot be written, naming it and the fix; else ``None``.

    Args:
        error: any exception; only an ``OSError`` of permissions, a read-only or full disk, or a file where a
            folder should be (or the reverse) gives a message.
        option: the command's option that puts its files elsewhere, e.g. ``"--output-dir DIR"``.
    """
    if not isinstance(error, OSError) or error.errno not in _FULL | _DENIED | _IN_THE_WAY:
        return None
    where = error.filename if error.filename is not None else "the output"
    if error.errno in _FULL:
        fix = f"free some space there, or write elsewhere with {option}"
    elif error.errno in _DENIED:
        fix = f"write elsewhere with {option}, or make that folder writable"
    else:
        fix = f"write elsewhere with {option}, or move what stands in the way"
    return f"cannot write {where}: {error.strerror}\n{fix}"
