"""Measuring a trained detector: accuracy on validation frames, size, MACs, CPU latency, training cost."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from rdd3d.core.types import Frame
from rdd3d.engine.config import RunConfig
from rdd3d.engine.datasets import build_datasets, evaluate, summary_metrics
from rdd3d.engine.detection_task import predict
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.models.complexity import count_macs, count_parameters

class Measurement(NamedTuple):
    metrics: dict[str, float]
    params: int
    gmacs: float
    latency_ms: float


def measure_checkpoint(checkpoint: str | Path, frames: Sequence[Frame], dataset,
                       device: torch.device, batch_size: int = 4, latency_frames: int = 2,
                       latency_repeats: int = 3) -> Measurement:
    """Accuracy of a checkpoint's detector on ``frames`` of ``dataset`` (on ``device``), then its size,
    MACs and CPU latency."""
    detector, _ = detector_from_checkpoint(checkpoint, device)
    metrics = summary_metrics(dataset, evaluate(dataset, frames, predict(detector, frames, device, batch_size)))
    detector.cpu()
    points = [torch.from_numpy(frames[0].points.points)]
    macs = count_macs(detector, points).macs
    latency = cpu_latency_ms(detector, frames[:latency_frames], latency_repeats)
    return Measurement(metrics, count_parameters(detector), macs / 1e9, latency)


@torch.no_grad()
def cpu_latency_ms(detector: nn.Module, frames: Sequence[Frame], repeats: int = 3) -> float:
    """Median wall time (ms) of the forward pass of one frame on the CPU, in eval mode, after a warm-up pass."""
    detector = detector.cpu().eval()
    inputs = [[torch.from_numpy(frame.points.points)] for frame in frames]
    for points in inputs:
        detector(points)
    times = []
    for _ in range(repeats):
        for points in inputs:
            started = time.perf_counter()
            detector(points)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def training_ms_per_frame(log_path: str | Path) -> float | None:
    """Training wall time per frame: the median over epochs of each epoch's mean throughput (the last
    ``frames_per_s`` an epoch logged covers the whole epoch). None when the run left no log."""
    if not Path(log_path).is_file():
        return None
    per_epoch = {record["epoch"]: record["frames_per_s"] for record in read_log(log_path, "train")}
    return 1000 / statistics.median(per_epoch.values()) if per_epoch else None


def validation_frames(config: RunConfig) -> tuple[list[Frame], Any]:
    """The validation frames every run is scored on (``eval.max_frames`` of them, read lazily) and their dataset."""
    lazy = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_in_memory=False))
    _, val_set = build_datasets(lazy.data)
    count = min(config.eval.max_frames or len(val_set), len(val_set))
    if count == 0:
        raise ValueError("the benchmark needs validation frames: data.val_size is 0")
    return [val_set[i] for i in range(count)], val_set
