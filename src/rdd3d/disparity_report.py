"""`rdd3d disparity`'s report, an application of :mod:`rdd3d.distill.disparity`: the verdict (does the student
suffer from representation disparity, did distillation shrink it), the histograms (``disparity.png``) and
``disparity.json``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

import numpy as np

from rdd3d.core.fileio import write_bytes, write_json
from rdd3d.distill.disparity import AGREEMENT, DisparityReport


def verdict(reports: Mapping[str, DisparityReport], widespread_share: float = 0.5) -> list[str]:
    """Plain-language reading of the reports ("before" the student checkpoint, "after" distillation)."""
    lines = []
    for label, report in reports.items():
        stats = report.summary()
        if stats["pairs"] == 0:
            lines.append(f"{label}: no region pairs (neither model detects anything above the score threshold)")
        elif stats["max"] <= AGREEMENT:
            lines.append(f"{label}: no representation disparity: teacher and student agree on all "
                         f"{stats['pairs']} region pairs")
        else:
            share = stats["share_above_lambda"]
            reading = ("widespread: the student suffers from representation disparity" if share >= widespread_share
                       else "concentrated on a few regions")
            lines.append(f"{label}: {share:.0%} of {stats['pairs']} region pairs lie above λ = {report.lam:g} of "
                         f"their batch's largest disparity (RDD distils those) — disparity is {reading}; "
                         f"mean d {stats['mean']:.3g}, median {stats['median']:.3g}, p90 {stats['p90']:.3g}")
    if "before" in reports and "after" in reports:
        before, after = reports["before"].summary(), reports["after"].summary()
        if reports["before"].mapping != reports["after"].mapping:
            lines.append(f"warning: before was measured with '{before['mapping']}', after with "
                         f"'{after['mapping']}': the distances are not on one scale (measure both with --fit-psi)")
        if before["pairs"] and after["pairs"] and before["median"] > AGREEMENT and before["p90"] > AGREEMENT:
            change = {key: after[key] / before[key] - 1 for key in ("mean", "median", "p90")}
            lines.append(f"after vs before: mean {change['mean']:+.0%}, median {change['median']:+.0%}, "
                         f"p90 {change['p90']:+.0%}: {_movement(change['median'], change['p90'])}")
    return lines


def _movement(median: float, p90: float) -> str:
    """How the bulk (median) and the high-disparity tail (p90) of d moved, from their relative changes."""
    def word(change: float) -> str:  # within ±0.5 %, as printed (+0%), it stayed
        return "stayed" if abs(change) < 0.005 else "shrank" if change < 0 else "grew"

    text = f"the bulk of the disparities (median) {word(median)}, the high-disparity tail (p90) {word(p90)}"
    if median <= -0.005 and p90 > median:  # the tail kept more of its disparity than the bulk
        text += (" less" if word(p90) == "shrank" else "") + " — the paper's observation for off-the-shelf KD"
    return text


def histogram_edges(reports: Mapping[str, DisparityReport], bins: int = 40) -> np.ndarray:
    """Log-spaced bin edges from the smallest positive d (at least ``AGREEMENT``) to the largest, shared
    so that histograms overlay: d spans orders of magnitude, and linear bins put almost every pair in
    the first one. Binned values are clipped to the edges (a d of 0 lands in the first bin)."""
    values = np.concatenate([r.distances for r in reports.values()] + [np.zeros(0)])
    positive = values[values > AGREEMENT]
    low = float(positive.min()) if positive.size else AGREEMENT
    high = max(float(values.max(initial=0.0)), low * 10)
    return np.geomspace(low, high, bins + 1)


def binned(distances: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """d clipped into ``[edges[0], edges[-1]]``, so that ``np.histogram`` counts every pair."""
    return np.clip(distances.astype(np.float64), edges[0], edges[-1])


def render_histograms(reports: Mapping[str, DisparityReport], edges: np.ndarray, title: str = "") -> bytes:
    """PNG: share of region pairs per bin of d (left) and of d̃ with λ marked (right), reports overlaid."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    raw, normalised = figure.subplots(1, 2)
    for (label, report), color in zip(reports.items(), ("#e53935", "#1e88e5", "#43a047")):
        weights = np.full(report.distances.size, 1 / max(report.distances.size, 1))
        name = f"{label} ({report.distances.size} pairs, {report.mapping})"
        raw.hist(binned(report.distances, edges), bins=edges, weights=weights, color=color, alpha=0.5, label=name)
        normalised.hist(report.normalised, bins=np.linspace(0, 1, 41), weights=weights, color=color, alpha=0.5,
                        label=name)
        normalised.axvline(report.lam, color="black", linestyle="--", linewidth=1)
    raw.set_xscale("log")
    raw.set_xlabel("d: mean squared channel-softmax difference of the pooled region pair (log scale)")
    normalised.set_xlabel("d̃ = d / largest d of the batch (dashed: λ)")
    for axes in (raw, normalised):
        axes.set_ylabel("share of region pairs")
        axes.legend(fontsize=8)
    figure.suptitle(title or "teacher–student representation disparity on region pairs")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_disparity_report(out_dir: str | Path, reports: Mapping[str, DisparityReport],
                           sources: Mapping[str, str], widespread_share: float = 0.5) -> list[str]:
    """``disparity.json`` (summaries, shared histogram, verdict) and ``disparity.png``; returns the verdict.
    ``sources`` names what was measured (e.g. ``{"teacher": path, "before": path, "after": path}``)."""
    out_dir = Path(out_dir)
    edges = histogram_edges(reports)
    lines = verdict(reports, widespread_share)
    payload = {"sources": dict(sources), "histogram_edges": edges.tolist(), "verdict": lines}
    for label, report in reports.items():
        counts, _ = np.histogram(binned(report.distances, edges), bins=edges)
        payload[label] = {**report.summary(), "histogram_counts": counts.tolist()}
    write_json(out_dir / "disparity.json", payload)
    write_bytes(out_dir / "disparity.png", render_histograms(reports, edges))
    return lines
