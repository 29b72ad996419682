import pytest

from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.config import load_run_config
from rdd3d.models.presets import preset_config


@pytest.mark.parametrize("overrides, named", [
    (["model.preset=nosuch"], "unknown detector preset 'nosuch'"),
    (["model.overrides={head.head_chanels: 3}"], "Key 'head_chanels' not in 'CenterHeadConfig'. Did you mean: 'head_channels'"),
    (["model.preset=second-xs", "data.dataset=nuscenes"], "preset 'second-xs' \\(anchor head\\) is offered on the datasets"),
])
def test_the_detector_is_checked_when_the_config_loads(overrides, named):
    # Before any data is read: a bad preset or override fails here, not after the datasets have loaded.
    with pytest.raises(ConfigError, match=named):
        load_run_config(overrides=overrides)


def test_good_model_settings_load():
    config = load_run_config(overrides=["model.preset=cp-voxel-xxs", "model.overrides={head.head_channels: 32}"])
    assert config.model.overrides == {"head.head_channels": 32}


@pytest.mark.parametrize("override, named", [
    ("trainer.epochs=0", "trainer.epochs must be >= 1, got 0"),
    ("trainer.epochs=-1", "trainer.epochs must be >= 1, got -1"),
    ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
    ("trainer.checkpoint_interval=0", "trainer.checkpoint_interval must be >= 1"),
    ("trainer.best_mode=sideways", "trainer.best_mode must be 'max' or 'min', got 'sideways'"),
    ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.lr=-1", "optim.lr must be a finite number > 0, got -1.0"),
    ("optim.pct_start=1.5", "optim.pct_start must be in \\(0, 1\\)"),
    ("device=tpu", "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_out_of_range_settings_fail_when_the_config_loads_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named):
        load_run_config(overrides=[override])


def test_a_bad_setting_exits_2_before_any_data_is_read(tmp_path, capsys):
    from rdd3d.cli import EXIT_USAGE, main

    assert main(["train", "--set", "trainer.checkpoint_interval=0", "--set", f"output_dir={tmp_path / 'run'}"]) == EXIT_USAGE
    assert "trainer.checkpoint_interval must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_data_classes_choose_the_detectors_classes_heads_and_anchors():
    config = load_run_config(overrides=["data.world.classes=[car,bus,barrier]", "model.preset=cp-voxel-xxs"])
    detector = config.detector_config()
    assert detector.classes == ("car", "bus", "barrier")
    assert detector.head.class_groups == (("car", "bus"), ("barrier",))  # the empty people group is dropped
    anchors = load_run_config(overrides=["data.world.classes=[car,bus,barrier]", "model.preset=second-xs"])
    assert [spec.class_name for spec in anchors.detector_config().head.anchors] == ["car", "bus", "barrier"]
    # By default the run's detector is the preset itself, on every class of the world.
    assert load_run_config().detector_config() == preset_config("cp-voxel", "synthetic")


@pytest.mark.parametrize("overrides, named", [
    (['model.overrides={"classes": [car]}'], "model.overrides must be free of 'classes'"),
    (["data.world.classes=[car]", "trainer.best_metric=AP/bus"], "trainer.best_metric must be a metric of"),
    (["data.world.classes=[car]", 'model.overrides={"head.half_period_classes": [barrier]}'],
     "half_period_classes must be classes of the detector \\['car'\\]"),
])
def test_a_class_choice_that_does_not_fit_fails_when_the_config_loads(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_run_config(overrides=overrides)
