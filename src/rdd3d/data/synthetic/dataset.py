"""The synthetic world as a dataset of Frames, generated on access and fully deterministic."""

from __future__ import annotations

import numpy as np

from rdd3d.data.synthetic.config import WorldConfig
from rdd3d.data.synthetic.lidar import POINT_COLUMNS, Scan, scan
from rdd3d.data.synthetic.scene import Scene, sample_scene
from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud

#: Split name -> the number that enters every frame's random seed, so splits never share a scene.
SPLITS = {"train": 0, "val": 1, "test": 2}
#: Where a run's evaluation frames may come from: "val", the split settings are tuned on; "test", held out.
EVALUATION_SPLITS = ("val", "test")

#: Evaluation range per class (metres from the sensor), as nuScenes' class_range: objects are placed
#: out to 40 m, so vehicles count to 40 m; the small classes, which get only a handful of points
#: beyond 30 m, count to 30 m.
CLASS_RANGES = {
    "car": 40.0, "truck": 40.0, "bus": 40.0,
    "pedestrian": 30.0, "cyclist": 30.0, "traffic_cone": 30.0, "barrier": 30.0,
}


def frame_from_scan(frame_id: str, scene: Scene, sweeps: Scan, classes: ClassTable) -> Frame:
    """A Frame with the scene's labelled boxes; ``metadata["num_points"]`` counts, per box, the points
    of the key sweep inside it (nuScenes' num_lidar_pts; boxes with none are kept, consumers filter)."""
    boxes = Boxes3D(scene.boxes)
    key_sweep = sweeps.points[sweeps.points[:, POINT_COLUMNS.index("time_lag")] == 0]
    num_points = boxes.contains_points(key_sweep[:, :3]).sum(axis=0).astype(np.int64)  # (M,)
    return Frame(frame_id, PointCloud(sweeps.points, POINT_COLUMNS), boxes, scene.labels, classes,
                 {"num_points": num_points})


class SyntheticDataset:
    """``size`` frames of split ``split``; frame ``i`` depends only on (seed, split, i) and the config. Its
    class table is the config's classes (``WorldConfig.classes``)."""

    class_ranges = CLASS_RANGES
    evaluation = "nuscenes"  # scored by the nuScenes-style metric (rdd3d.evaluation.detection_metrics)

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0,
                 config: WorldConfig = WorldConfig()) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits are {list(SPLITS)}")
        if size < 0:
            raise ValueError(f"SyntheticDataset size must be >= 0, got {size}")
        self.split, self.size, self.seed, self.config = split, size, seed, config
        self.classes = ClassTable(config.classes)

    def __len__(self) -> int:
        return self.size

    def frame_id(self, index: int) -> str:
        return f"{self.split}_{index:06d}"

    def frame_rng(self, index: int) -> np.random.Generator:
        """The generator frame ``index`` is drawn from: a function of (seed, split, index) only."""
        if not 0 <= index < self.size:
            raise IndexError(f"frame index {index} out of range for a {self.split} set of {self.size}")
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def scene(self, index: int) -> tuple[Scene, Scan]:
        """The scene behind frame ``index`` and its scan (with which actor each point hit)."""
        rng = self.frame_rng(index)
        scene = sample_scene(self.config, rng)
        return scene, scan(scene, self.config.lidar, rng)

    def __getitem__(self, index: int) -> Frame:
        index = int(index)
        if index < 0:
            index += self.size
        scene, sweeps = self.scene(index)
        return frame_from_scan(self.frame_id(index), scene, sweeps, self.classes)
