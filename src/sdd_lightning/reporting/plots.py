"""The two figures of ``sdd-summary``: best top-1 per setting beside the paper, and every run's curve.

``summary_bars.png``: one horizontal bar per setting, the mean best-epoch validation top-1 over its finished
seeds with a ± one standard deviation whisker, the published number as a black diamond, and the numbers
written beside the bar. ``summary_curves.png``: validation top-1 per epoch of every run, one colour per
setting (the same colours as the bars); unfinished, interrupted and failed runs dashed. Drawn with
matplotlib's Agg canvas (no display, no global backend switch); without matplotlib the figures are
skipped with a one-line notice. Each figure is written whole or not at all.
"""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdd_lightning.reporting.model_card import write_atomically

if TYPE_CHECKING:
    from sdd_lightning.reporting.runs import SettingRow

__all__ = ["plot_summary"]

BARS_FILE = "summary_bars.png"
CURVES_FILE = "summary_curves.png"
LABEL_WIDTH = 42  # characters per line of a setting's name on an axis or in a legend


def _label(setting: str, width: int = LABEL_WIDTH) -> str:
    """A setting's name wrapped onto lines of about ``width`` characters, breaking at spaces and slashes only."""
    lines = textwrap.wrap(setting.replace("/", "/ "), width, break_long_words=False, break_on_hyphens=False)
    return "\n".join(line.replace("/ ", "/") for line in lines)


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _bars(rows: list[SettingRow], colours: list[Any], path: Path) -> None:
    from matplotlib.figure import Figure

    labels = [_label(r.setting) for r in rows]
    height = 1.6 + sum(0.28 * label.count("\n") + 0.5 for label in labels)
    fig = Figure(figsize=(11, max(3.5, height)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]  # first setting at the top, as in the table
    extremes: list[float] = []
    published_label = None
    texts: list[tuple[int, str]] = []
    for y, row, colour in zip(ys, rows, colours, strict=True):
        stats = row.stats("val/acc1_best")
        text = "no finished run"
        if stats is not None:
            mean, std, n = stats
            ax.barh(y, mean, xerr=std, color=colour, alpha=0.85, capsize=5, height=0.6)
            text = f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}") + f"  (n={n})"
            extremes += [mean - (std or 0.0), mean + (std or 0.0)]
        if row.published is not None:
            published_label = f"published (paper, {row.published_metric} epoch)"
            ax.plot(row.published, y, marker="D", color="black", markersize=7, linestyle="none", zorder=3)
            text += f"   paper: {row.published:.2f}"
            extremes.append(row.published)
        texts.append((y, text))
    ax.set_yticks(ys, labels, fontsize=9)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    low = 0.0
    if extremes:
        span = max(max(extremes) - min(extremes), 2.0)
        low = max(0.0, min(extremes) - 0.5 * span)
        ax.set_xlim(low, min(100.0, max(extremes) + 0.6 * span))
    for y, text in texts:  # on the bar's left end, clear of the whisker and the published marker
        box = {"boxstyle": "round,pad=0.25", "facecolor": "white", "alpha": 0.8, "linewidth": 0}
        ax.annotate(text, (low, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=9, bbox=box)
    zoomed = " (axis zoomed: does not start at 0)" if low > 0 else ""
    ax.set_xlabel(f"best-epoch validation top-1 (%){zoomed}")
    ax.set_title("Best-epoch validation top-1 per setting: mean ± std over finished seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    if published_label:
        ax.plot([], [], marker="D", color="black", linestyle="none", label=published_label)
        ax.legend(loc="lower right", fontsize=9)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """Writes the figure as a PNG, whole or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomically(path, buffer.getvalue())


def _draw_curves(ax: Any, rows: list[SettingRow], colours: list[Any], first_epoch: int = 0) -> None:
    from matplotlib.ticker import MaxNLocator

    for row, colour in zip(rows, colours, strict=True):
        for run in row.finished + row.others:
            points = [(e, v) for e, v in run.curve if e >= first_epoch]
            if not points:
                continue
            epochs, values = zip(*points, strict=True)
            style = {"linestyle": "-"} if run.finished else {"linestyle": "--", "linewidth": 2.0, "zorder": 3}
            marker = "." if len(epochs) < 30 else ""
            ax.plot(epochs, values, color=colour, alpha=0.9, marker=marker, **({"linewidth": 1.3} | style))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _curves(rows: list[SettingRow], colours: list[Any], path: Path) -> bool:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    handles = []
    for row, colour in zip(rows, colours, strict=True):
        count = sum(1 for r in row.finished + row.others if r.curve)
        if count:
            label = f"{_label(row.setting, 90)}  ({count} run{'' if count == 1 else 's'})"
            handles.append(Line2D([], [], color=colour, label=label))
    if not handles:
        return False
    if any(r.curve and not r.finished for row in rows for r in row.others):
        handles.append(Line2D([], [], color="grey", linestyle="--", label="dashed: unfinished, interrupted or failed"))
    last_epoch = max(e for row in rows for r in row.finished + row.others for e, _ in r.curve)
    legend_lines = sum(h.get_label().count("\n") + 1 for h in handles)
    fig = Figure(figsize=(12, 5.5 + 0.2 * legend_lines), layout="constrained")
    zoom = last_epoch >= 8  # a close-up of the last quarter, where settings differ by tenths of a point
    axes = fig.subplots(1, 2, width_ratios=[3, 2]) if zoom else [fig.add_subplot()]
    _draw_curves(axes[0], rows, colours)
    if zoom:
        axes[0].set_title("whole run")
        _draw_curves(axes[1], rows, colours, first_epoch=int(0.75 * last_epoch))
        axes[1].set_title("last quarter of the epochs (zoomed)")
    fig.suptitle("Validation top-1 per epoch: one line per run, one colour per setting")
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, frameon=False)
    _save(fig, path)
    return True


def plot_summary(rows: list[SettingRow], out: Path) -> list[Path]:
    """Draws ``summary_bars.png`` and ``summary_curves.png`` into ``out``; returns the files written.

    Needs matplotlib (a dev dependency): without it, prints a one-line notice and writes nothing. The curves
    figure is skipped, with a notice, when no run has a CSV log (``<run>/csv/metrics.csv``).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("sdd-summary: matplotlib is not installed; no figures (pip install matplotlib)", file=sys.stderr)
        return []
    colours = _colours(len(rows))
    written = [out / BARS_FILE]
    _bars(rows, colours, written[0])
    if _curves(rows, colours, out / CURVES_FILE):
        written.append(out / CURVES_FILE)
    else:
        print("sdd-summary: no run has a CSV log (logger=csv); no curves figure", file=sys.stderr)
    return written
