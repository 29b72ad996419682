"""`rdd3d distill` end to end with an anchor-head pair: a SECOND teacher trained one step on the
synthetic world, a SECOND-XS student distilled with RDD, its checkpoint evaluated."""

import pytest

from rdd3d.cli import main
from rdd3d.engine.run_logging import read_log

TINY = ["--set", "data.train_size=2", "--set", "data.val_size=1", "--set", "trainer.batch_size=2",
        "--set", "trainer.num_workers=0", "--set", "trainer.epochs=1"]


def test_distill_second_xs_from_a_second_teacher_with_rdd(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["train", "--set", f"output_dir={teacher}", "--set", "model.preset=second", *TINY]) == 0
    out = tmp_path / "second-xs-rdd"
    assert main(["distill", "--teacher", str(teacher / "last.pt"), "--student", "second-xs", "--method", "rdd",
                 "--set", f"output_dir={out}", *TINY]) == 0
    record = read_log(out / "log.jsonl", "train")[-1]
    terms = {key for key in record if key.startswith("loss/") and key != "loss/total"}
    assert terms == {"loss/det/classification", "loss/det/regression", "loss/det/direction", "loss/rdd/feature",
                     "loss/rdd/logit"}
    assert record["loss/total"] == pytest.approx(sum(record[key] for key in terms), rel=1e-5)
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--frames", "1", "--device", "cpu"]) == 0
