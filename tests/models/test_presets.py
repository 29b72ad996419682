import math

import pytest

from rdd3d.models.complexity import count_parameters
from rdd3d.models.presets import (
    DATASETS, build_detector, list_datasets, list_presets, pillar_range, preset_config, teacher_of,
)

VOXEL_FAMILY = ("cp-voxel", "cp-voxel-s", "cp-voxel-xs", "cp-voxel-xxs")
PILLAR_FAMILY = ("cp-pillar", "cp-pillar-v0.4", "cp-pillar-v0.48", "cp-pillar-v0.64")


#: The model zoos' nuScenes CenterPoints (importable teachers, docs/import-checkpoints.md).
ZOO_TEACHERS = ("cp-voxel-v0.075", "cp-pillar-s4")
SECOND_FAMILY = ("second", "second-s", "second-xs")
POINTPILLARS_FAMILY = ("pointpillars", "pointpillars-s", "pointpillars-xs")


def test_the_paper_presets_and_datasets_are_listed():
    assert list_presets() == VOXEL_FAMILY + PILLAR_FAMILY + ZOO_TEACHERS + SECOND_FAMILY + POINTPILLARS_FAMILY
    assert list_presets("nuscenes") == VOXEL_FAMILY + PILLAR_FAMILY + ZOO_TEACHERS
    assert "cp-voxel-v0.075" not in list_presets("kitti") and "cp-pillar-s4" in list_presets("kitti")
    assert list_datasets() == ("nuscenes", "kitti", "synthetic")
    assert [teacher_of(name) for name in list_presets()] == (
        ["cp-voxel"] * 4 + ["cp-pillar"] * 4 + ["cp-voxel", "cp-pillar"] + ["second"] * 3 + ["pointpillars"] * 3)


def test_the_model_zoo_teachers_have_their_grids_on_nuscenes():
    """OpenPCDet's cbgs_voxel0075_res3d_centerpoint and cbgs_dyn_pp_centerpoint / mmdetection3d's pillar02."""
    fine = build_detector("cp-voxel-v0.075", "nuscenes")
    assert fine.voxelizer.grid_size == (1440, 1440, 40) and fine.point_cloud_range == (-54, -54, -5, 54, 54, 3)
    assert count_parameters(fine) == count_parameters(build_detector("cp-voxel", "nuscenes"))
    pillar = build_detector("cp-pillar-s4", "nuscenes")
    assert pillar.voxelizer.grid_size == (512, 512, 1) and pillar.feature_stride == 4
    assert pillar.backbone_2d.out_channels == 384
    with pytest.raises(ValueError, match=r"preset 'cp-voxel-v0.075' \(a grid only those datasets name\) is offered "
                                         r"on the datasets \['nuscenes'\], not on 'kitti'"):
        preset_config("cp-voxel-v0.075", "kitti")


@pytest.mark.parametrize("dataset", ["nuscenes", "kitti", "synthetic"])
def test_every_preset_builds_with_a_shrinking_family(dataset):
    params = {name: count_parameters(build_detector(name, dataset)) for name in list_presets(dataset)}
    for family in (VOXEL_FAMILY, SECOND_FAMILY, POINTPILLARS_FAMILY):
        if family[0] in params:
            sizes = [params[name] for name in family]
            assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(family), family
    assert len({params[name] for name in PILLAR_FAMILY}) == 1  # pillar students keep every width


def test_sparsekd_widths_on_nuscenes():
    """Channel counts of SparseKD's CP-Voxel students (3D width, BEV width, head channels)."""
    expected = {"cp-voxel": (16, 128, 64), "cp-voxel-s": (16, 64, 32), "cp-voxel-xs": (12, 64, 32),
                "cp-voxel-xxs": (8, 32, 16)}
    for name, (conv_input, bev_first, head) in expected.items():
        detector = build_detector(name, "nuscenes")
        assert detector.backbone_3d.conv_input[0].out_channels == conv_input
        assert detector.backbone_3d.out_channels == conv_input * 8 * 2  # 128 x width x 2 z slices
        assert detector.backbone_2d.blocks[0][0].out_channels == bev_first
        assert detector.head.shared_conv[0].out_channels == head


def test_nuscenes_heads_velocity_and_weights():
    detector = build_detector("cp-voxel", "nuscenes")
    assert [len(task.heatmap[-1].bias) for task in detector.head.tasks] == [1, 2, 2, 1, 2, 2]
    config = detector.config
    assert config.point_columns == ("x", "y", "z", "intensity", "time_lag")
    assert config.head.with_velocity and config.head.loss.code_weights == (1, 1, 1, 1, 1, 1, 1, 1, 0.2, 0.2)
    assert detector.voxelizer.grid_size == (1024, 1024, 40) and detector.feature_stride == 8
    kitti = build_detector("cp-voxel", "kitti")
    assert not kitti.config.head.with_velocity and kitti.voxelizer.grid_size == (1408, 1600, 40)
    assert kitti.classes.names == ("Car", "Pedestrian", "Cyclist")


@pytest.mark.parametrize("dataset", ["nuscenes", "kitti", "synthetic"])
def test_pillar_students_grow_the_pillar_over_the_same_area(dataset):
    setup = DATASETS[dataset]
    teacher = preset_config("cp-pillar", dataset)
    for name, pillar in zip(PILLAR_FAMILY, (0.32, 0.4, 0.48, 0.64)):
        config = preset_config(name, dataset)
        size = pillar * setup.pillar_scale
        assert config.voxel_size[:2] == pytest.approx((size, size))
        for axis in (0, 1):
            extent = config.point_cloud_range[axis + 3] - config.point_cloud_range[axis]
            cells = round(extent / size)
            assert cells % 4 == 0 and math.isclose(cells * size, extent)
            wanted = setup.point_cloud_range[axis + 3] - setup.point_cloud_range[axis]
            assert abs(extent - wanted) <= 2 * size + 1e-6  # at most half of 4 pillars on each side
        assert config.max_points_per_voxel >= teacher.max_points_per_voxel


def test_pillar_range_moves_to_a_whole_number_of_strides():
    assert pillar_range((-51.2, -51.2, -5, 51.2, 51.2, 3), 0.48, 4) == (-50.88, -50.88, -5, 50.88, 50.88, 3)
    assert pillar_range((0, -40, -3, 70.4, 40, 1), 0.32, 4) == (0, -39.68, -3, 70.4, 39.68, 1)


def test_overrides_reach_nested_fields_and_unknown_ones_are_named():
    config = preset_config("cp-voxel-s", "synthetic", sparse_backend="torch",
                           **{"head.head_channels": 8, "backbone_2d.num_filters": [16, 32]})
    assert (config.sparse_backend, config.head.head_channels, config.backbone_2d.num_filters) == ("torch", 8, (16, 32))
    with pytest.raises(ValueError, match=r"Key 'channels' not in 'CenterHeadConfig'.*\(key: head.channels\)"):
        preset_config("cp-voxel", **{"head.channels": 8})
    with pytest.raises(ValueError, match="sparse_backend must be one of"):
        preset_config("cp-voxel", sparse_backend="cuda")
    with pytest.raises(ValueError, match="unknown detector preset 'cp-voxel-m'"):
        build_detector("cp-voxel-m")
    with pytest.raises(ValueError, match="unknown dataset 'waymo'"):
        build_detector("cp-voxel", dataset="waymo")


def test_a_class_subset_keeps_the_default_groups_of_its_classes():
    config = preset_config("cp-voxel-xxs", "nuscenes", class_subset=("car", "bus", "barrier", "bicycle"))
    assert config.classes == ("car", "bus", "barrier", "bicycle")
    assert config.head.class_groups == (("car",), ("bus",), ("barrier",), ("bicycle",))
    second = preset_config("second-xs", "synthetic", class_subset=("truck", "pedestrian"))
    assert [spec.class_name for spec in second.head.anchors] == ["truck", "pedestrian"]
    assert second.head.anchors[0] == DATASETS["synthetic"].anchors[1]
    detector = build_detector("cp-voxel-xxs", "synthetic", class_subset=("car", "barrier"))
    assert detector.classes.names == ("car", "barrier") and detector.head.task_labels == ((0,), (1,))
    for classes in (("car", "bike"), (), ("car", "car")):
        with pytest.raises(ValueError, match="expected distinct classes of the dataset"):
            preset_config("cp-voxel", "synthetic", class_subset=classes)
