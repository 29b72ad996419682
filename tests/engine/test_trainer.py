import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rdd3d.data.collate import TrainingFrames
from rdd3d.core.checkpoint import load_checkpoint
from rdd3d.engine.distributed import init_distributed
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.trainer import OptimConfig, Preempted, Trainer, TrainerConfig, TrainingDivergedError

from toy_training import ToyTrainee, toy_evaluator, toy_frames

RANGE = [-50, -50, -5, 50, 50, 5]


def make_trainer(tmp_path, trainee_factory=ToyTrainee, evaluate=toy_evaluator, **overrides) -> Trainer:
    settings = dict(epochs=3, batch_size=4, num_workers=0, log_interval=1, checkpoint_interval=4, seed=3)
    settings.update(overrides)
    torch.manual_seed(0)
    trainee = trainee_factory()  # built after seeding, so every run starts from the same weights
    dataset = TrainingFrames(toy_frames(), RANGE, augmentation=None)
    return Trainer(trainee, dataset, TrainerConfig(**settings), OptimConfig(lr=1e-2), tmp_path,
                   init_distributed("cpu"), evaluate=evaluate)


def losses(path):
    return [(r["step"], r["loss/total"]) for r in read_log(path / "log.jsonl", "train")]


def test_one_cycle_schedule_shape(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    lrs = [r["lr"] for r in read_log(tmp_path / "log.jsonl", "train")]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0 < peak < len(lrs) - 1  # warms up, then anneals
    assert lrs[-1] < lrs[0] < lrs[peak]


def test_killed_run_resumes_with_identical_loss_curve(tmp_path):
    straight = tmp_path / "straight"
    make_trainer(straight).fit()

    crashed = tmp_path / "crashed"
    # Simulated kill during step 11: the checkpoint of step 8 is the last one on disk.
    with pytest.raises(RuntimeError, match="killed"):
        trainer = make_trainer(crashed, trainee_factory=lambda: _ActionAt(11, _killed))
        trainer.fit()
    assert load_checkpoint(crashed / "last.pt")["step"] == 8
    resumed = make_trainer(crashed)
    resumed.resume(crashed / "last.pt")
    resumed.fit()
    assert losses(crashed) == losses(straight)  # identical on CPU, step by step
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(straight / name)["model"], load_checkpoint(crashed / name)["model"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_nan_loss_stops_naming_step_and_term_and_keeps_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, trainee_factory=lambda: ToyTrainee(nan_at_call=6))
    with pytest.raises(TrainingDivergedError, match=r"step 6: loss term 'toy/regression' is nan"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4


def test_weights_that_overflow_behind_a_finite_loss_are_never_saved(tmp_path):
    def corrupt_running_statistics(trainee):
        def action():
            trainee.net[1].running_var.fill_(float("inf"))  # train mode reads batch statistics: the loss stays finite
        return action

    def factory():
        trainee = _ActionAt(6, None)
        trainee.action = corrupt_running_statistics(trainee)
        return trainee

    trainer = make_trainer(tmp_path, trainee_factory=factory)
    with pytest.raises(TrainingDivergedError, match=r"step 6: 1 weight tensors hold NaN or Inf \(net.1.running_var\); "
                                                    r"stopped without saving, the last good checkpoint is .*last.pt"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4


def test_a_divergence_before_any_checkpoint_says_there_is_none(tmp_path):
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet"):
        make_trainer(tmp_path, trainee_factory=lambda: ToyTrainee(nan_at_call=2)).fit()
    assert not (tmp_path / "last.pt").exists()


def test_ctrl_c_saves_and_resume_continues(tmp_path):
    trainer = make_trainer(tmp_path, trainee_factory=lambda: ToyTrainee(interrupt_at_call=10))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 9
    resumed = make_trainer(tmp_path)
    resumed.resume(tmp_path / "last.pt")
    result = resumed.fit()
    assert result.step == 18 and result.epoch == 3
    assert [step for step, _ in losses(tmp_path)] == list(range(1, 19))


def test_sigterm_finishes_the_step_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    make_trainer(straight).fit()
    before = signal.getsignal(signal.SIGTERM)
    stopped = tmp_path / "stopped"
    with pytest.raises(Preempted):
        make_trainer(stopped, trainee_factory=lambda: _ActionAt(10, _sigterm)).fit()
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler lives only while it fits
    assert load_checkpoint(stopped / "last.pt")["step"] == 10  # the step the signal came in was finished
    resumed = make_trainer(stopped)
    resumed.resume(stopped / "last.pt")
    resumed.fit()
    assert losses(stopped) == losses(straight)
    a, b = load_checkpoint(straight / "last.pt")["model"], load_checkpoint(stopped / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_rdd3d_train_exits_143_on_sigterm_with_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "rdd3d", "train", "--set", "model.preset=cp-voxel-xxs",
               "--set", "data.train_size=40", "--set", "data.val_size=2", "--set", "data.cache_in_memory=false", "--set", "trainer.batch_size=1",
               "--set", "trainer.num_workers=1", "--set", "trainer.log_interval=1", "--set", f"output_dir={out}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text().strip():
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)  # the whole job, data workers included, as a scheduler signals it
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 143, errors
    assert "stopped by SIGTERM" in errors
    state = load_checkpoint(out / "last.pt")
    assert state["step"] >= 1 and state["epoch"] == 0


@pytest.mark.parametrize("eval_interval, killed_evaluation", [(0, 1), (2, 1), (1, 3)])
def test_a_run_killed_during_an_evaluation_resumes_with_that_evaluation(tmp_path, eval_interval, killed_evaluation):
    straight = tmp_path / "straight"
    make_trainer(straight, eval_interval=eval_interval).fit()
    calls = []

    def dies_during_evaluation(model, context):
        calls.append(1)
        if len(calls) == killed_evaluation:
            raise RuntimeError("killed")
        return toy_evaluator(model, context)

    stopped = tmp_path / "stopped"
    with pytest.raises(RuntimeError, match="killed"):
        make_trainer(stopped, evaluate=dies_during_evaluation, eval_interval=eval_interval).fit()
    resumed = make_trainer(stopped, eval_interval=eval_interval)
    resumed.resume(stopped / "last.pt")
    resumed.fit()
    def records(run):  # everything but the wall-clock throughput
        return [{key: value for key, value in record.items() if key != "frames_per_s"}
                for record in read_log(run / "log.jsonl")]

    assert records(stopped) == records(straight)  # every evaluation included, once
    best = load_checkpoint(straight / "best.pt"), load_checkpoint(stopped / "best.pt")
    assert best[0]["step"] == best[1]["step"] and best[0]["best_value"] == best[1]["best_value"]


def test_best_checkpoint_follows_metric(tmp_path):
    trainer = make_trainer(tmp_path)
    result = trainer.fit()
    evals = read_log(tmp_path / "log.jsonl", "eval")
    assert len(evals) == 3
    assert result.best_metric == pytest.approx(max(e["mAP"] for e in evals))
    assert (tmp_path / "tensorboard").is_dir()


class _ActionAt(ToyTrainee):
    """Runs ``action`` when its forward is called for the ``call``-th time, before computing anything."""

    def __init__(self, call: int, action) -> None:
        super().__init__()
        self.action_call, self.action = call, action

    def forward(self, batch):
        if self.calls + 1 == self.action_call:
            self.action()
        return super().forward(batch)


def _killed() -> None:
    raise RuntimeError("killed")


def _sigterm() -> None:  # as a cluster scheduler sends it before it kills a job
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_new_trainer_removes_the_checkpoint_temp_files_a_killed_one_left(tmp_path):
    leftovers = [tmp_path / ".last.pt.k2j3h4.tmp", tmp_path / ".best.pt.a1b2c3.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a checkpoint")
    other = tmp_path / ".results.json.x.tmp"  # not the trainer's
    other.write_text("{")
    make_trainer(tmp_path)
    assert not any(leftover.exists() for leftover in leftovers) and other.exists()


def test_a_torn_last_log_line_is_dropped_on_resume_and_a_damaged_log_is_named(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    log_path = tmp_path / "log.jsonl"
    complete = log_path.read_text()
    log_path.write_text(complete + '{"kind": "train", "step": 19, "ep')  # killed while appending
    resumed = make_trainer(tmp_path)
    resumed.resume(tmp_path / "last.pt")
    assert log_path.read_text() == complete
    log_path.write_text('{"kind": "train"\n' + complete)
    with pytest.raises(ValueError, match=r"log.jsonl: line 1 is not a JSON record"):
        read_log(log_path)


def test_a_finished_run_extended_to_more_epochs_runs_a_new_cycle_over_them(tmp_path):
    make_trainer(tmp_path, epochs=2).fit()
    extended = make_trainer(tmp_path, epochs=4)
    extended.resume(tmp_path / "last.pt")
    result = extended.fit()
    steps_per_epoch = extended.steps_per_epoch
    assert result.epoch == 4 and result.step == 4 * steps_per_epoch
    records = read_log(tmp_path / "log.jsonl", "train")
    lrs = {r["step"]: r["lr"] for r in records}
    added = [lrs[step] for step in sorted(lrs) if step > 2 * steps_per_epoch]
    # A second warm-up and anneal over the added epochs, from the first cycle's last learning rate.
    peak = max(range(len(added)), key=added.__getitem__)
    assert 0 < peak < len(added) - 1 and added[peak] == pytest.approx(1e-2, rel=0.05)
    assert added[-1] < added[0] < added[peak]
    assert lrs[2 * steps_per_epoch] < added[0]
    assert [r["epoch"] for r in read_log(tmp_path / "log.jsonl", "eval")] == [1, 2, 3, 4]


def test_a_run_killed_while_extended_resumes_like_an_uninterrupted_extension(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    for folder in (straight, crashed):
        make_trainer(folder, epochs=2).fit()
    trainer = make_trainer(straight, epochs=4)
    trainer.resume(straight / "last.pt")
    trainer.fit()
    # The extension's trainee counts its calls from 0: killed in its 7th step, after the checkpoint of step 16.
    with pytest.raises(RuntimeError, match="killed"):
        trainer = make_trainer(crashed, epochs=4, trainee_factory=lambda: _ActionAt(7, _killed))
        trainer.resume(crashed / "last.pt")
        trainer.fit()
    assert load_checkpoint(crashed / "last.pt")["cycle_start"] == 12
    resumed = make_trainer(crashed, epochs=4)
    resumed.resume(crashed / "last.pt")
    resumed.fit()
    assert losses(crashed) == losses(straight)


KILLABLE_RUN = Path(__file__).parent / "killable_toy_run.py"


def _run_toy(out: Path, pause_at: str = "") -> None:
    """Run the toy training in a process; with ``pause_at``, SIGKILL it where it pauses."""
    command = [sys.executable, str(KILLABLE_RUN), str(out), *(["--pause-at", pause_at] if pause_at else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not pause_at:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
        return
    deadline = time.monotonic() + 120
    while not (out / "paused").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.05)
    process.kill()
    process.wait()
    (out / "paused").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("pause_at", ["evaluation:2", "checkpoint-write:3", "checkpoint-write:5"])
def test_sigkill_during_an_evaluation_or_a_checkpoint_write_then_resume_matches_an_uninterrupted_run(
        tmp_path, pause_at):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    _run_toy(straight)
    _run_toy(killed, pause_at)
    if pause_at.startswith("checkpoint-write"):
        assert list(killed.glob(".*.pt.*.tmp")), "the kill should leave a half-written temp file"
    _run_toy(killed)  # resumes from the last.pt the kill left
    assert not list(killed.glob(".*.tmp"))

    def records(run):  # everything but the wall-clock throughput
        return [{key: value for key, value in record.items() if key != "frames_per_s"}
                for record in read_log(run / "log.jsonl")]

    assert records(killed) == records(straight)
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(straight / name), load_checkpoint(killed / name)
        assert a["step"] == b["step"]
        for key in a["model"]:
            torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
