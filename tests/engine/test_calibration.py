"""Scale calibration: one rule, every method alike, and the calibrated weights do what the rule says."""

import pytest
import torch

from rdd3d.core.config_loading import build_config
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.data.synthetic.config import WorldConfig
from rdd3d.distill.methods import DistillConfig
from rdd3d.engine.calibration import CalibrationRule, calibrate
from rdd3d.models import build_detector

SMALL_WORLD = build_config(WorldConfig, overrides=["lidar.beams=8", "lidar.azimuth_resolution_deg=2.0",
                                                   "lidar.num_sweeps=1", "objects_per_scene=[4,6]"])


@pytest.fixture(scope="module")
def models_and_frames():
    torch.manual_seed(0)
    teacher, student = build_detector("cp-voxel-s"), build_detector("cp-voxel-xxs")
    frames = [SyntheticDataset("val", 2, seed=0, config=SMALL_WORLD)[i] for i in range(2)]
    return teacher, student, frames


def test_calibrated_weights_give_each_term_the_rules_share_of_the_detection_gradient(models_and_frames):
    teacher, student, frames = models_and_frames
    rule = CalibrationRule(share=0.25, batches=1, batch_size=2)
    before = {key: value.clone() for key, value in student.state_dict().items()}
    found = calibrate(teacher, student, ["rdd", "pp-logit", "lad"], frames, rule)
    assert [(c.method, c.option) for c in found] == [
        ("rdd", "alpha_feature"), ("rdd", "alpha_logit"), ("pp-logit", "weight"), ("pp-logit", "regression_weight")]
    assert all(torch.equal(before[key], value) for key, value in student.state_dict().items())  # left as found
    assert all(c.calibrated is not None and c.term_gradient > 0 for c in found)
    # Measured again at the calibrated values: every term pulls with the rule's share.
    overrides = ["rdd." + c.override.split(".", 2)[2] for c in found if c.method == "rdd"]
    overrides += ["pp_logit." + c.override.split(".", 2)[2] for c in found if c.method == "pp-logit"]
    calibrated = build_config(DistillConfig, overrides=overrides)
    again = calibrate(teacher, student, ["rdd", "pp-logit"], frames, rule, base=calibrated)
    for c in again:
        assert c.term_gradient / c.detection_gradient == pytest.approx(rule.share, rel=1e-3), (c.method, c.option)
        assert c.calibrated == pytest.approx(c.default, rel=1e-3)


def test_a_rule_out_of_range_is_refused():
    with pytest.raises(ValueError, match="share must be > 0"):
        CalibrationRule(share=0)
