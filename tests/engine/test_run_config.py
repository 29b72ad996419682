import pytest

from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.config import load_run_config


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
