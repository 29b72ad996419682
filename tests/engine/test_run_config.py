import pytest

from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.config import load_run_config


@pytest.mark.parametrize("overrides, named", [
    (["model.preset=nosuch"], "unknown detector preset 'nosuch'"),
    (["model.overrides={head.head_chanels: 3}"], "detector override 'head.head_chanels': CenterHeadConfig has no field"),
    (["model.preset=second-xs", "data.dataset=nuscenes"], "preset 'second-xs' \\(anchor head\\) is offered on the datasets"),
])
def test_the_detector_is_checked_when_the_config_loads(overrides, named):
    # Before any data is read: a bad preset or override fails here, not after the datasets have loaded.
    with pytest.raises(ConfigError, match=named):
        load_run_config(overrides=overrides)


def test_good_model_settings_load():
    config = load_run_config(overrides=["model.preset=cp-voxel-xxs", "model.overrides={head.head_channels: 32}"])
    assert config.model.overrides == {"head.head_channels": 32}
