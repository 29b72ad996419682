"""Bird's-eye-view pictures of frames, ground truth and detections."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rdd3d.core.types import Boxes3D, ClassTable, PointCloud  # noqa: E402
from rdd3d.core.fileio import write_bytes  # noqa: E402

#: Box colour by label: matplotlib's tab10 with its grey, which would vanish among the points, made lime.
CLASS_COLORS = matplotlib.colors.ListedColormap([*plt.get_cmap("tab10").colors[:7], "#7fff00",
                                                 *plt.get_cmap("tab10").colors[8:]])
#: Points in greys, so that the boxes' colours stand out; the lowest stay visible on the black background.
POINT_COLORS = matplotlib.colors.LinearSegmentedColormap.from_list("points", ["#505050", "#ffffff"])


@dataclass(frozen=True)
class BoxLayer:
    """A set of boxes to draw: ground truth (no scores) or detections (with scores)."""

    boxes: Boxes3D
    labels: np.ndarray  # (M,) class indices
    scores: np.ndarray | None = None  # (M,) or None for ground truth
    name: str = "ground truth"
    min_score: float = 0.3


def render_bev(
    points: PointCloud,
    layers: Sequence[BoxLayer] = (),
    classes: ClassTable | None = None,
    color_by: str = "height",
    extent: float | None = None,
    title: str = "",
    dpi: int = 110,
) -> bytes:
    """Render a BEV picture as PNG bytes: points in greys by height or intensity, boxes with headings.

    Boxes take their class's colour; ground truth is drawn solid, detections dashed with their score
    next to them (those below the layer's ``min_score`` are left out). The legend names the classes
    drawn and each layer. The picture shows ``extent`` metres around the sensor each way; by default the
    square around the sensor and 99 % of the points (a KITTI cloud cropped to the camera's view fills it).
    """
    if color_by not in ("height", "intensity"):
        raise ValueError(f"color_by must be 'height' or 'intensity', got {color_by!r}")
    values = points.xyz[:, 2] if color_by == "height" else points.column("intensity")
    x_limits, y_limits = _view(points, extent)
    figure, axes = plt.subplots(figsize=(8, 8))
    axes.set_facecolor("black")
    low, high = np.percentile(values, [2, 98]) if len(points) else (0.0, 1.0)
    scatter = axes.scatter(
        points.xyz[:, 0], points.xyz[:, 1], c=values, s=1.0, cmap=POINT_COLORS, vmin=low, vmax=high, linewidths=0
    )
    figure.colorbar(scatter, ax=axes, fraction=0.035, pad=0.02, label=color_by)
    drawn = set()
    for layer in layers:
        drawn |= _draw_layer(axes, layer, classes)
    axes.plot([0], [0], marker="^", color="white", markersize=6)  # the sensor
    axes.set_xlim(*x_limits)
    axes.set_ylim(*y_limits)
    axes.set_aspect("equal")
    axes.set_xlabel("x (m, forward)")
    axes.set_ylabel("y (m, left)")
    axes.set_title(title)
    handles = [plt.Line2D([], [], color="white", linestyle="--" if layer.scores is not None else "-",
                          label=layer.name if layer.scores is None else f"{layer.name} (score >= {layer.min_score:g})")
               for layer in layers]
    handles += [plt.Line2D([], [], color=CLASS_COLORS(label % 10), linewidth=4, label=_class_name(classes, label))
                for label in sorted(drawn)]
    axes.legend(handles=handles, loc="upper right", fontsize=8, facecolor="#333333", labelcolor="white")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def save_bev(path: str | os.PathLike, points: PointCloud, layers: Sequence[BoxLayer] = (), **kwargs) -> None:
    """Render and write a BEV PNG atomically."""
    write_bytes(path, render_bev(points, layers, **kwargs))


def _view(points: PointCloud, extent: float | None) -> tuple[tuple[float, float], tuple[float, float]]:
    """The x and y limits of a square picture (module docstring of :func:`render_bev`)."""
    if extent is not None:
        return (-extent, extent), (-extent, extent)
    if not len(points):
        return (-50.0, 50.0), (-50.0, 50.0)
    xy = points.xyz[:, :2]
    low = np.minimum(np.percentile(xy, 0.5, axis=0), 0.0)  # (2,), the sensor at 0 included
    high = np.maximum(np.percentile(xy, 99.5, axis=0), 0.0)
    centre, half = (low + high) / 2, float((high - low).max()) / 2 + 2.0  # a 2 m margin
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def _class_name(classes: ClassTable | None, label: int) -> str:
    return classes.name(label) if classes is not None else str(label)


def _draw_layer(axes, layer: BoxLayer, classes: ClassTable | None) -> set[int]:
    """Draw one layer; returns the labels it drew."""
    is_detection = layer.scores is not None
    keep = np.ones(len(layer.boxes), dtype=bool) if not is_detection else layer.scores >= layer.min_score
    corners = layer.boxes.bev_corners()[keep]  # (K, 4, 2)
    labels = np.asarray(layer.labels)[keep].astype(int)
    scores = layer.scores[keep] if is_detection else None
    centers = layer.boxes.centers[keep]
    fronts = corners[:, [0, 3]].mean(axis=1)  # midpoint of the front face
    style = "--" if is_detection else "-"
    for index in range(len(corners)):
        color = CLASS_COLORS(labels[index] % 10)
        outline = np.vstack([corners[index], corners[index][:1]])
        axes.plot(outline[:, 0], outline[:, 1], style, color=color, linewidth=0.9)
        axes.plot([centers[index, 0], fronts[index, 0]], [centers[index, 1], fronts[index, 1]], style,
                  color=color, linewidth=0.9)
        if is_detection:  # the class is the colour's
            axes.text(corners[index, 0, 0], corners[index, 0, 1], f"{scores[index]:.2f}", color=color, fontsize=5,
                      clip_on=True)
    return set(labels.tolist())


def save_training_curves(path: str | os.PathLike, logs: Mapping[str, str | os.PathLike]) -> None:
    """Total training loss per step (left) and validation mAP per evaluation (right), one line per run."""
    from rdd3d.engine.run_logging import read_log

    figure, (loss_axes, map_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for name, log_path in logs.items():
        train = read_log(log_path, "train")
        loss_axes.plot([r["step"] for r in train], [r["loss/total"] for r in train], label=name)
        evals = read_log(log_path, "eval")
        map_axes.plot([r["step"] for r in evals], [100 * r["mAP"] for r in evals], marker="o", label=name)
    loss_axes.set(xlabel="step", ylabel="total loss", title="training loss", yscale="log")
    map_axes.set(xlabel="step", ylabel="mAP (%)", title="validation mAP")
    for axes in (loss_axes, map_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
