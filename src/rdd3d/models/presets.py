"""The named CenterPoint presets: the paper's teachers and SparseKD's compact students, per dataset.

A preset is a family member (how it is compressed relative to its teacher) applied to a dataset
setup (classes, heads, input and the family's base resolution and widths)::

    build_detector("cp-voxel-s", dataset="nuscenes")
    preset_config("cp-pillar-v0.64", dataset="synthetic", sparse_backend="torch")

Families (SparseKD, NeurIPS 2022, as used by RDD):

* **CP-Voxel**: MeanVFE, VoxelResBackBone8x, BEV backbone [5, 5] / strides [1, 2] / filters [128, 256]
  / up-sampling [1, 2] to [256, 256], CenterHead with 64 shared channels. Students shrink widths:
  S = {3D width 1, BEV width 0.5, head 32}, XS = {0.75, 0.5, 32}, XXS = {0.5, 0.25, 16}.
* **CP-Pillar**: PillarVFE [64, 64], BEV backbone [3, 5, 5] / strides [1, 2, 2] / filters
  [64, 128, 256] / up-sampling [1, 2, 4] to [128, 128, 128] (output at pillar resolution), head 64.
  Students keep every width and grow the pillar: 0.32 m -> 0.4 / 0.48 / 0.64 m, with 20 -> 28 / 36 / 50
  points per pillar; the x/y range moves to the nearest whole number of BEV backbone strides (SparseKD's
  configs adjust it too), so teacher and student BEV maps differ in resolution.

Two more teachers are the model zoos' nuScenes CenterPoints, so that their checkpoints can be imported
(:mod:`rdd3d.models.foreign`, docs/import-checkpoints.md):

* ``cp-voxel-v0.075``: CP-Voxel at OpenPCDet's / mmdetection3d's finer grid (nuScenes: 0.075 m voxels,
  +-54 m); offered on the datasets whose setup names that grid.
* ``cp-pillar-s4``: CenterPoint's own pillar model (0.2 m pillars at the paper's scale; BEV backbone
  strides [2, 2, 2], up-sampling [0.5, 1, 2], so its map is at stride 4).

Datasets: ``nuscenes`` and ``kitti`` use the paper's sizes. ``synthetic`` is sized for a CPU: the
same families with voxels and pillars twice as large, sparse 3D channels x0.5 and dense channels
(BEV backbone, head, pillar net) x0.75. The coarser grid leaves fewer BEV cells per active voxel than
on nuScenes; the dense widths make up for it, so that students keep the paper's share of their
teacher's MACs (docs/models.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

from rdd3d.core.config_loading import with_changes
from rdd3d.data.kitti.dataset import DEFAULT_CLASSES as KITTI_DEFAULT_CLASSES
from rdd3d.data.nuscenes.dataset import DEFAULT_CLASSES as NUSCENES_DEFAULT_CLASSES
from rdd3d.data.synthetic.catalog import CLASS_NAMES as SYNTHETIC_CLASSES
from rdd3d.data.synthetic.catalog import CLASS_SPECS as SYNTHETIC_SPECS
from rdd3d.data.synthetic.config import LidarConfig
from rdd3d.models.backbones2d import BEVBackboneConfig
from rdd3d.models.detector import Detector, DetectorConfig
from rdd3d.models.heads import (
    KITTI_ANCHORS, AnchorClassConfig, AnchorDecodeConfig, AnchorHeadConfig, CenterHeadConfig, DecodeConfig,
    LossConfig, NMSConfig,
)


@dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid other than a dataset's default one."""

    voxel_size: tuple[float, float, float]
    point_cloud_range: tuple[float, float, float, float, float, float]
    max_voxels: tuple[int, int]  # train, test


@dataclass(frozen=True)
class DatasetSetup:
    """What a dataset fixes for every preset built on it."""

    classes: tuple[str, ...]  # label order of the dataset's loader
    class_groups: tuple[tuple[str, ...], ...]  # one CenterHead task per group
    point_columns: tuple[str, ...]
    with_velocity: bool
    loss: LossConfig
    decode: DecodeConfig
    point_cloud_range: tuple[float, float, float, float, float, float]  # x0 y0 z0 x1 y1 z1
    voxel_size: tuple[float, float, float]  # CP-Voxel family
    max_points_per_voxel: int
    max_voxels: tuple[int, int]  # train, test
    max_pillars: tuple[int, int]  # train, test (CP-Pillar family)
    pillar_scale: float = 1.0  # pillar sizes are the paper's times this
    sparse_width_scale: float = 1.0  # sparse 3D backbone channels are the paper's times this
    dense_width_scale: float = 1.0  # so are the BEV backbone's, the head's and the pillar net's
    # Anchor-head families (SECOND, PointPillars): one anchor entry per class; () where they are not offered.
    anchors: tuple[AnchorClassConfig, ...] = ()
    # The model zoos' finer CP-Voxel grid (cp-voxel-v0.075); None where no such model is published.
    fine_voxel: VoxelGrid | None = None


#: OpenPCDet's CenterPoint nuScenes class order and its six heads.
NUSCENES = DatasetSetup(
    classes=NUSCENES_DEFAULT_CLASSES,
    class_groups=(("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
                  ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone")),
    point_columns=("x", "y", "z", "intensity", "time_lag"),
    with_velocity=True,
    loss=LossConfig(loc_weight=0.25, code_weights=(1.0,) * 8 + (0.2, 0.2)),  # CenterPoint: velocity at 0.2
    decode=DecodeConfig(
        max_per_task=500, score_threshold=0.1, post_center_range=(-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
        nms=NMSConfig(kind="rotated", iou_threshold=0.2, pre_max_size=1000, post_max_size=83),
    ),
    point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
    voxel_size=(0.1, 0.1, 0.2),
    max_points_per_voxel=10,
    max_voxels=(60000, 60000),
    max_pillars=(30000, 30000),
    # OpenPCDet's cbgs_voxel0075_res3d_centerpoint (1440 x 1440 x 40 voxels).
    fine_voxel=VoxelGrid((0.075, 0.075, 0.2), (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (120000, 160000)),
)

#: OpenPCDet's KITTI CenterPoint settings (one head for the three classes, no velocity).
KITTI = DatasetSetup(
    classes=KITTI_DEFAULT_CLASSES,
    class_groups=(("Car", "Pedestrian", "Cyclist"),),
    point_columns=("x", "y", "z", "intensity"),
    with_velocity=False,
    loss=LossConfig(loc_weight=2.0, code_weights=(1.0,) * 8),
    decode=DecodeConfig(
        max_per_task=500, score_threshold=0.1, post_center_range=(-75.2, -75.2, -2.0, 75.2, 75.2, 4.0),
        nms=NMSConfig(kind="rotated", iou_threshold=0.01, pre_max_size=4096, post_max_size=500),
    ),
    point_cloud_range=(0.0, -40.0, -3.0, 70.4, 40.0, 1.0),
    voxel_size=(0.05, 0.05, 0.1),
    max_points_per_voxel=5,
    max_voxels=(16000, 40000),
    anchors=KITTI_ANCHORS,
    max_pillars=(16000, 40000),
)

def _synthetic_anchors() -> tuple[AnchorClassConfig, ...]:
    """One anchor per class at the class's mean size, standing on the mean ground (the sensor's mount
    height below the LiDAR); KITTI's thresholds: vehicles 0.6 / 0.45, the rest 0.5 / 0.35."""
    ground = -LidarConfig().mount_height
    vehicles = ("car", "truck", "bus")
    return tuple(
        AnchorClassConfig(name, (SYNTHETIC_SPECS[name].mean_size,), bottom_z=ground,
                          matched_threshold=0.6 if name in vehicles else 0.5,
                          unmatched_threshold=0.45 if name in vehicles else 0.35)
        for name in SYNTHETIC_CLASSES
    )


#: The built-in world: nuScenes-like input (two sweeps with a time lag). +-41.6 m covers the world's
#: 40 m object radius and evaluation range with a whole number of 0.2 m voxels and 1.6 m BEV cells
#: (an even count, as the BEV backbone's stride 2 needs). Vehicles, people and small static objects
#: in three heads.
SYNTHETIC = DatasetSetup(
    classes=SYNTHETIC_CLASSES,
    class_groups=(("car", "truck", "bus"), ("pedestrian", "cyclist"), ("traffic_cone", "barrier")),
    point_columns=("x", "y", "z", "intensity", "time_lag"),
    with_velocity=True,
    loss=NUSCENES.loss,
    decode=dataclasses.replace(NUSCENES.decode, post_center_range=(-51.6, -51.6, -10.0, 51.6, 51.6, 10.0)),
    point_cloud_range=(-41.6, -41.6, -5.0, 41.6, 41.6, 3.0),
    voxel_size=(0.2, 0.2, 0.2),
    max_points_per_voxel=10,
    max_voxels=(40000, 40000),
    max_pillars=(20000, 20000),
    pillar_scale=2.0,
    sparse_width_scale=0.5,
    dense_width_scale=0.75,
    anchors=_synthetic_anchors(),
)

DATASETS: dict[str, DatasetSetup] = {"nuscenes": NUSCENES, "kitti": KITTI, "synthetic": SYNTHETIC}

#: CP-Voxel's BEV backbone (CenterPoint nuScenes / SparseKD Waymo); ``width`` is set per preset.
VOXEL_BEV = BEVBackboneConfig(
    layer_nums=(5, 5), layer_strides=(1, 2), num_filters=(128, 256), upsample_strides=(1, 2),
    num_upsample_filters=(256, 256),
)
#: CP-Pillar's BEV backbone (SparseKD): its output keeps the pillar resolution.
PILLAR_BEV = BEVBackboneConfig(
    layer_nums=(3, 5, 5), layer_strides=(1, 2, 2), num_filters=(64, 128, 256), upsample_strides=(1, 2, 4),
    num_upsample_filters=(128, 128, 128),
)
PILLAR_FILTERS = (64, 64)
#: CenterPoint's nuScenes pillar model (OpenPCDet's cbgs_dyn_pp_centerpoint, mmdetection3d's centerpoint_pillar02):
#: three levels from a stride-2 start, the first level's output brought down to stride 4.
CENTERPOINT_PILLAR_BEV = BEVBackboneConfig(
    layer_nums=(3, 5, 5), layer_strides=(2, 2, 2), num_filters=(64, 128, 256), upsample_strides=(0.5, 1, 2),
    num_upsample_filters=(128, 128, 128),
)


def _head(setup: DatasetSetup, head_channels: int) -> CenterHeadConfig:
    return CenterHeadConfig(
        class_groups=setup.class_groups, head_channels=_scaled(head_channels, setup.dense_width_scale),
        with_velocity=setup.with_velocity, loss=setup.loss, decode=setup.decode,
    )


def _scaled(channels: int, scale: float) -> int:
    return max(1, int(channels * scale))


def _voxel_family(setup: DatasetSetup, backbone_3d: str, width_3d: float, backbone_2d: BEVBackboneConfig,
                  width_2d: float, head: CenterHeadConfig | AnchorHeadConfig) -> DetectorConfig:
    """A voxel-family detector (mean VFE, sparse 3D backbone) at the dataset's voxel size."""
    return DetectorConfig(
        classes=setup.classes,
        point_cloud_range=setup.point_cloud_range,
        voxel_size=setup.voxel_size,
        max_points_per_voxel=setup.max_points_per_voxel,
        max_voxels_train=setup.max_voxels[0],
        max_voxels_test=setup.max_voxels[1],
        point_columns=setup.point_columns,
        encoder="mean_vfe",
        backbone_3d=backbone_3d,
        backbone_3d_width=width_3d * setup.sparse_width_scale,
        backbone_2d=dataclasses.replace(backbone_2d, width=width_2d * setup.dense_width_scale),
        head=head,
    )


def cp_voxel(setup: DatasetSetup, width_3d: float, width_2d: float, head_channels: int) -> DetectorConfig:
    """A CP-Voxel family member; widths relative to the teacher (1, 1, 64)."""
    return _voxel_family(setup, "voxel_res", width_3d, VOXEL_BEV, width_2d, _head(setup, head_channels))


def cp_voxel_fine(setup: DatasetSetup) -> DetectorConfig:
    """The CP-Voxel teacher on the dataset's finer grid (:attr:`DatasetSetup.fine_voxel`)."""
    if setup.fine_voxel is None:
        raise ValueError("this dataset names no finer CP-Voxel grid (DatasetSetup.fine_voxel)")
    grid = setup.fine_voxel
    config = cp_voxel(setup, width_3d=1.0, width_2d=1.0, head_channels=64)
    return dataclasses.replace(config, voxel_size=grid.voxel_size, point_cloud_range=grid.point_cloud_range,
                               max_voxels_train=grid.max_voxels[0], max_voxels_test=grid.max_voxels[1])


def pillar_range(point_cloud_range: tuple[float, ...], pillar: float, multiple: int) -> tuple[float, ...]:
    """``point_cloud_range`` with x and y grown or shrunk about their centre to the nearest multiple
    of ``multiple`` pillars (e.g. nuScenes' +-51.2 m becomes +-50.88 m at 0.48 m for a multiple of 4)."""
    fitted = list(point_cloud_range)
    for axis in (0, 1):
        low, high = point_cloud_range[axis], point_cloud_range[axis + 3]
        cells = max(1, round((high - low) / (pillar * multiple))) * multiple
        centre, half = (low + high) / 2, cells * pillar / 2
        fitted[axis], fitted[axis + 3] = round(centre - half, 6), round(centre + half, 6)
    return tuple(fitted)


def _pillar_family(setup: DatasetSetup, pillar: float, max_points_per_pillar: int, filters: tuple[int, ...],
                   width_encoder: float, backbone_2d: BEVBackboneConfig, width_2d: float,
                   head: CenterHeadConfig | AnchorHeadConfig) -> DetectorConfig:
    """A pillar-family detector: ``pillar`` in metres at the paper's scale; the range fitted to a whole
    number of the BEV backbone's blocks."""
    size = pillar * setup.pillar_scale
    point_cloud_range = pillar_range(setup.point_cloud_range, size, math.prod(backbone_2d.layer_strides))
    return DetectorConfig(
        classes=setup.classes,
        point_cloud_range=point_cloud_range,
        voxel_size=(size, size, point_cloud_range[5] - point_cloud_range[2]),
        max_points_per_voxel=max_points_per_pillar,
        max_voxels_train=setup.max_pillars[0],
        max_voxels_test=setup.max_pillars[1],
        point_columns=setup.point_columns,
        encoder="pillar",
        pillar_filters=tuple(_scaled(c, width_encoder * setup.dense_width_scale) for c in filters),
        backbone_2d=dataclasses.replace(backbone_2d, width=width_2d * setup.dense_width_scale),
        head=head,
    )


def cp_pillar(setup: DatasetSetup, pillar: float, max_points_per_pillar: int) -> DetectorConfig:
    """A CP-Pillar family member; ``pillar`` in metres at the paper's scale (teacher 0.32)."""
    return _pillar_family(setup, pillar, max_points_per_pillar, PILLAR_FILTERS, 1.0, PILLAR_BEV, 1.0,
                          _head(setup, 64))


def cp_pillar_s4(setup: DatasetSetup) -> DetectorConfig:
    """CenterPoint's pillar model: 0.2 m pillars at the paper's scale with 20 points each, its map at stride 4."""
    return _pillar_family(setup, 0.2, 20, PILLAR_FILTERS, 1.0, CENTERPOINT_PILLAR_BEV, 1.0, _head(setup, 64))


#: SECOND's BEV backbone (OpenPCDet KITTI): the same two levels as CP-Voxel's.
SECOND_BEV = VOXEL_BEV
#: PointPillars' BEV backbone (OpenPCDet KITTI): three levels from a stride-2 start, output at stride 2.
POINTPILLARS_BEV = BEVBackboneConfig(
    layer_nums=(3, 5, 5), layer_strides=(2, 2, 2), num_filters=(64, 128, 256), upsample_strides=(1, 2, 4),
    num_upsample_filters=(128, 128, 128),
)
POINTPILLARS_FILTERS = (64,)
#: The RDD paper's KITTI post-processing: axis-aligned NMS at IoU 0.5 (rdd-method.md §11).
PAPER_KITTI_NMS = NMSConfig(kind="nearest_bev", iou_threshold=0.5, pre_max_size=4096, post_max_size=500)


def _anchor_head(setup: DatasetSetup) -> AnchorHeadConfig:
    return AnchorHeadConfig(anchors=setup.anchors, decode=AnchorDecodeConfig(nms=PAPER_KITTI_NMS))


def second(setup: DatasetSetup, width_3d: float, width_2d: float) -> DetectorConfig:
    """A SECOND family member (mean VFE, plain sparse backbone, anchor head); widths relative to the teacher."""
    return _voxel_family(setup, "voxel", width_3d, SECOND_BEV, width_2d, _anchor_head(setup))


def pointpillars(setup: DatasetSetup, width_encoder: float, width_2d: float) -> DetectorConfig:
    """A PointPillars family member (0.16 m pillars at the paper's scale, 32 points each); widths relative
    to the teacher. On KITTI the range becomes x 0..70.4, y +-39.68 (a whole number of 8-pillar blocks)."""
    return _pillar_family(setup, 0.16, 32, POINTPILLARS_FILTERS, width_encoder, POINTPILLARS_BEV, width_2d,
                          _anchor_head(setup))


#: Every preset: name -> how it is built from a dataset setup.
PRESETS: dict[str, Callable[[DatasetSetup], DetectorConfig]] = {
    "cp-voxel": partial(cp_voxel, width_3d=1.0, width_2d=1.0, head_channels=64),
    "cp-voxel-s": partial(cp_voxel, width_3d=1.0, width_2d=0.5, head_channels=32),
    "cp-voxel-xs": partial(cp_voxel, width_3d=0.75, width_2d=0.5, head_channels=32),
    "cp-voxel-xxs": partial(cp_voxel, width_3d=0.5, width_2d=0.25, head_channels=16),
    "cp-pillar": partial(cp_pillar, pillar=0.32, max_points_per_pillar=20),
    "cp-pillar-v0.4": partial(cp_pillar, pillar=0.4, max_points_per_pillar=28),
    "cp-pillar-v0.48": partial(cp_pillar, pillar=0.48, max_points_per_pillar=36),
    "cp-pillar-v0.64": partial(cp_pillar, pillar=0.64, max_points_per_pillar=50),
    "cp-voxel-v0.075": cp_voxel_fine,
    "cp-pillar-s4": cp_pillar_s4,
    "second": partial(second, width_3d=1.0, width_2d=1.0),
    "second-s": partial(second, width_3d=0.75, width_2d=0.5),
    "second-xs": partial(second, width_3d=0.5, width_2d=0.5),
    "pointpillars": partial(pointpillars, width_encoder=1.0, width_2d=1.0),
    "pointpillars-s": partial(pointpillars, width_encoder=0.75, width_2d=0.5),
    "pointpillars-xs": partial(pointpillars, width_encoder=0.5, width_2d=0.5),
}
#: Presets with an anchor head: only on datasets whose setup gives anchors.
ANCHOR_PRESETS = ("second", "second-s", "second-xs", "pointpillars", "pointpillars-s", "pointpillars-xs")
#: Presets on a finer grid: only on datasets whose setup names one.
FINE_VOXEL_PRESETS = ("cp-voxel-v0.075",)

#: Each preset's teacher (a teacher is its own).
TEACHERS: dict[str, str] = {
    name: next(family for family in ("cp-voxel", "cp-pillar", "second", "pointpillars") if name.startswith(family))
    for name in PRESETS
}


def list_presets(dataset: str | None = None) -> tuple[str, ...]:
    """Every preset, or those offered on ``dataset`` (anchor-head families need the dataset's anchors)."""
    if dataset is None:
        return tuple(PRESETS)
    return tuple(name for name in PRESETS if _offered(name, DATASETS[dataset]))


def _offered(name: str, setup: DatasetSetup) -> bool:
    if name in ANCHOR_PRESETS:
        return bool(setup.anchors)
    return name not in FINE_VOXEL_PRESETS or setup.fine_voxel is not None


def list_datasets() -> tuple[str, ...]:
    return tuple(DATASETS)


def teacher_of(name: str) -> str:
    _check_name(name)
    return TEACHERS[name]


def _check_name(name: str) -> None:
    if name not in PRESETS:
        raise ValueError(f"unknown detector preset {name!r}; known presets: {list(PRESETS)}")


def restrict_classes(setup: DatasetSetup, classes: Sequence[str]) -> DatasetSetup:
    """``setup`` for a subset of its classes (a synthetic world of fewer classes), in the order given: the
    class groups keep their order with the other classes left out (a group left empty is dropped), the
    anchors are those of the chosen classes."""
    classes = tuple(classes)
    unknown = [name for name in classes if name not in setup.classes]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes {list(classes)}: expected distinct classes of the dataset, some of "
                         f"{list(setup.classes)}")
    kept_groups = [index for index, group in enumerate(setup.class_groups) if set(group) & set(classes)]
    anchors = {spec.class_name: spec for spec in setup.anchors}
    return dataclasses.replace(
        setup,
        classes=classes,
        class_groups=tuple(tuple(name for name in setup.class_groups[i] if name in classes) for i in kept_groups),
        anchors=tuple(anchors[name] for name in classes) if anchors else (),
    )


def preset_config(name: str, dataset: str = "synthetic", *, class_subset: Sequence[str] | None = None,
                  **overrides) -> DetectorConfig:
    """The config of preset ``name`` on ``dataset`` with ``overrides`` applied; ``class_subset``, some of the
    dataset's classes in label order (None: all of them), restricts the preset to those
    (:func:`restrict_classes`) before the overrides apply.

    An override key names a :class:`DetectorConfig` field, or a nested one with dots (pass those
    as ``**{"head.head_channels": 32}``); a mapping value for a nested config overrides its fields.
    They are typed and merged as config files are (:func:`rdd3d.core.config_loading.with_changes`), all
    before any check, so fields that must agree (a pillar's z size and the z range) can change together.
    An unknown field is an error.
    """
    _check_name(name)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} for detector presets; known datasets: {list(DATASETS)}")
    if not _offered(name, DATASETS[dataset]):
        offered = [key for key, setup in DATASETS.items() if _offered(name, setup)]
        kind = "anchor head" if name in ANCHOR_PRESETS else "a grid only those datasets name"
        raise ValueError(f"preset {name!r} ({kind}) is offered on the datasets {offered}, not on {dataset!r}")
    setup = DATASETS[dataset] if class_subset is None else restrict_classes(DATASETS[dataset], class_subset)
    return with_changes(PRESETS[name](setup), overrides, source=f"detector overrides of {name!r}")


def build_detector(name: str, dataset: str = "synthetic", *, class_subset: Sequence[str] | None = None,
                   **overrides) -> Detector:
    """A freshly initialised :class:`Detector` for preset ``name`` on ``dataset`` (on ``class_subset`` of its
    classes)."""
    return Detector(preset_config(name, dataset, class_subset=class_subset, **overrides))
