"""A picture of what SDD distils: the teacher's local predictions on the grid of each scale, for a few images.

For every image a row: the image with its label and the teacher's and student's global predictions, then one
panel per local scale (2x2, 4x4, ...): the image under its grid, each cell tinted by the region's weight
(complementary regions, weighted beta, in orange; consistent ones in blue), labelled with the class the teacher
predicts there, and marked with whether the student's prediction for that region agrees with the teacher's
(a green tick or a red cross). Drawn with matplotlib's object API (no global pyplot state).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch

from sdd_lightning.method.losses import Consistency, complementary_mask

__all__ = ["draw_region_maps", "figure_to_array"]

COMPLEMENTARY = "#f28e2b"
CONSISTENT = "#4e79a7"


def _as_rgb(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """Normalised ``(N, 3, H, W)`` images back to ``(N, H, W, 3)`` in [0, 1]."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:  # unknown normalisation: stretch each image to [0, 1]
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _short(name: str, width: int = 9) -> str:
    return name if len(name) <= width else name[: width - 1] + "."


def draw_region_maps(
    images: torch.Tensor,
    labels: torch.Tensor,
    teacher_local: torch.Tensor,
    student_local: torch.Tensor,
    scales: Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    consistency: str | Consistency = Consistency.CORRECTNESS,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str = "",
):
    """The figure described in the module docstring (a ``matplotlib.figure.Figure``).

    Args:
        images: the normalised images ``(N, 3, H, W)``.
        labels: their classes ``(N,)``.
        teacher_local: the teacher's local logits ``(N, R, K)``, region 0 global.
        student_local: the student's local logits ``(N, R, K)``.
        scales: the grid sides of the regions, e.g. ``(1, 2, 4)``.
        class_names: class names by index (indices are shown without them).
        consistency: the rule that marks regions complementary (as the run's loss uses).
        mean, std: the normalisation of ``images``, to show them in their colours.
        title: a line above the panels (e.g. the epoch).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    names = list(class_names) if class_names is not None else [str(k) for k in range(teacher_local.shape[-1])]
    rgb = _as_rgb(images, mean, std)
    teacher_pred = teacher_local.argmax(-1).cpu()
    student_pred = student_local.argmax(-1).cpu()
    complementary = complementary_mask(teacher_local.cpu(), labels.cpu(), consistency)
    local_scales = [s for s in scales if s > 1]
    offsets = np.cumsum([0, *[s * s for s in scales]])
    rows, cols = len(images), 1 + len(local_scales)
    figure = Figure(figsize=(3.2 * cols, 3.4 * rows + 0.9), dpi=100, layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, cols, squeeze=False))
    for n in range(rows):
        label = int(labels[n])
        t_global, s_global = int(teacher_pred[n, 0]), int(student_pred[n, 0])
        ax = axes[n, 0]
        ax.imshow(rgb[n], interpolation="nearest")
        ax.set_title(
            f"label: {names[label]}\nteacher: {names[t_global]} {'(right)' if t_global == label else '(wrong)'}\n"
            f"student: {names[s_global]}",
            fontsize=9,
            loc="left",
        )
        ax.axis("off")
        height, width = rgb[n].shape[:2]
        for c, side in enumerate(local_scales, start=1):
            ax = axes[n, c]
            ax.imshow(rgb[n], interpolation="nearest")
            first = offsets[list(scales).index(side)]
            cell_h, cell_w = height / side, width / side
            for r in range(side * side):
                i, j = divmod(r, side)
                region = first + r
                colour = COMPLEMENTARY if complementary[n, region] else CONSISTENT
                x0, y0 = j * cell_w - 0.5, i * cell_h - 0.5
                ax.add_patch(Rectangle((x0, y0), cell_w, cell_h, facecolor=colour, alpha=0.3, edgecolor="none"))
                inset = max(cell_w, cell_h) * 0.03
                ax.add_patch(
                    Rectangle(
                        (x0 + inset, y0 + inset),
                        cell_w - 2 * inset,
                        cell_h - 2 * inset,
                        facecolor="none",
                        edgecolor=colour,
                        linewidth=3,
                    )
                )
                agree = bool(student_pred[n, region] == teacher_pred[n, region])
                ax.text(
                    x0 + cell_w / 2,
                    y0 + cell_h / 2,
                    f"{_short(names[int(teacher_pred[n, region])])}\n{'✓' if agree else '✗'}",
                    ha="center",
                    va="center",
                    fontsize=max(5, 11 - 2 * side // 2),
                    color="#1a7f37" if agree else "#c62828",
                    fontweight="bold",
                    bbox={"facecolor": "white", "alpha": 0.75, "pad": 1, "edgecolor": "none"},
                )
            share = float(complementary[n, first : first + side * side].float().mean())
            ax.set_title(f"{side}x{side}: teacher's region classes\n{100 * share:.0f}% complementary", fontsize=9)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.axis("off")
    rule = Consistency.parse(consistency).value
    legend = (
        f"orange frame: complementary region (weight beta), blue: consistent (rule: {rule}). "
        "Text: the teacher's class for the region; green tick / red cross: the student's prediction there "
        "agrees / disagrees with the teacher's."
    )
    legend = "\n".join(textwrap.wrap(legend, width=int(48 * cols)))
    figure.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9)
    return figure


def figure_to_array(figure) -> np.ndarray:
    """The figure rendered as an ``(H, W, 3)`` ``uint8`` RGB array (for loggers that take images)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
