"""From frames to training batches.

A batch carries raw points, not voxels: every detector voxelises with its own voxel size on
its own device, so a teacher and a student of different resolutions read the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from rdd3d.data.gt_sampling import GroundTruthSampler
from rdd3d.data.transforms import AugmentationConfig, augment, crop_to_range
from rdd3d.core.types import Frame


@dataclass
class DetectionBatch:
    points: list[torch.Tensor]  # per sample (N_i, C) float32
    gt_boxes: list[torch.Tensor]  # per sample (M_i, 7 or 9) float32
    gt_labels: list[torch.Tensor]  # per sample (M_i,) int64
    frame_ids: list[str]
    point_columns: tuple[str, ...]
    metadata: list[dict] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return len(self.points)

    def to(self, device: torch.device | str) -> "DetectionBatch":
        def move(tensors):
            return [t.to(device, non_blocking=True) for t in tensors]

        return DetectionBatch(move(self.points), move(self.gt_boxes), move(self.gt_labels),
                              self.frame_ids, self.point_columns, self.metadata)


def collate_frames(frames: Sequence[Frame]) -> DetectionBatch:
    columns = frames[0].points.columns
    for frame in frames:
        if frame.points.columns != columns:
            raise ValueError(f"frame {frame.frame_id} has point columns {frame.points.columns}, batch has {columns}")
    return DetectionBatch(
        points=[torch.from_numpy(frame.points.points) for frame in frames],
        gt_boxes=[torch.from_numpy(frame.boxes.tensor) for frame in frames],
        gt_labels=[torch.from_numpy(frame.labels) for frame in frames],
        frame_ids=[frame.frame_id for frame in frames],
        point_columns=columns,
        metadata=[frame.metadata for frame in frames],
    )


class CachedFrames(Sequence[Frame]):
    """Every frame of ``source`` loaded once, up front (with a progress bar); keeps ``classes``,
    ``class_ranges`` and ``evaluation`` (which metric scores it) of the source."""

    def __init__(self, source, name: str = "frames") -> None:
        self.frames = [source[i] for i in tqdm(range(len(source)), desc=f"loading {name}", leave=False)]
        self.classes = source.classes
        self.class_ranges = source.class_ranges
        self.evaluation = source.evaluation

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        return self.frames[index]


class TrainingFrames(Dataset):
    """Frames cropped to the detector's range and (optionally) augmented.

    Augmentation randomness is drawn from ``(seed, epoch, index)``, so a frame looks the same
    whichever worker loads it and whether or not training was resumed in between.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        point_cloud_range: Sequence[float],
        augmentation: AugmentationConfig | None = None,
        seed: int = 0,
        gt_sampler: GroundTruthSampler | None = None,
    ) -> None:
        self.frames = frames
        self.point_cloud_range = list(point_cloud_range)
        self.augmentation = augmentation
        self.gt_sampler = gt_sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        frame = self.frames[index]
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.gt_sampler is not None:  # pasted objects then move with the global augmentation
                frame = self.gt_sampler.sample(frame, rng)
            frame = augment(frame, self.augmentation, rng)
        return crop_to_range(frame, self.point_cloud_range)
