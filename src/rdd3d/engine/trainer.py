"""The training loop shared by teacher training and distillation.

What it trains is a *trainee*: an ``nn.Module`` whose ``forward(batch)`` returns a mapping of
already-weighted loss terms (``{"det/heatmap": ..., "rdd/feature": ...}``); the total loss is
their sum. A detector's own training and a distiller (frozen teacher + student + adapters)
are both trainees, so the loop needs no knowledge of either.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rdd3d.core.checkpoint import load_checkpoint, load_model_state, non_finite_tensors, save_checkpoint
from rdd3d.core.config_loading import require
from rdd3d.core.fileio import stale_temp_files
from rdd3d.data.collate import collate_frames
from rdd3d.engine.distributed import DistributedContext, ResumableSampler, barrier
from rdd3d.engine.run_logging import RunLogger
from rdd3d.engine.threads import ThreadGovernor

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module, DistributedContext], Mapping[str, float]]


@dataclass
class OptimConfig:
    """AdamW with CenterPoint's one-cycle schedule (LR and beta1 cycled together)."""

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01
    beta2: float = 0.99
    div_factor: float = 10.0  # the cycle starts at lr / div_factor
    final_div_factor: float = 1e4  # ... and ends at lr / div_factor / final_div_factor
    pct_start: float = 0.4  # fraction of the steps spent warming up
    momentum_low: float = 0.85  # beta1 at the LR peak
    momentum_high: float = 0.95  # beta1 at the start and end
    grad_clip_norm: float = 10.0  # 0 disables clipping

    def __post_init__(self) -> None:
        finite = math.isfinite
        require(finite(self.lr) and self.lr > 0, "optim.lr", "a finite number > 0", self.lr)
        require(finite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", "finite and >= 0",
                self.weight_decay)
        require(0 <= self.beta2 < 1, "optim.beta2", "in [0, 1)", self.beta2)
        for name in ("div_factor", "final_div_factor"):
            value = getattr(self, name)
            require(finite(value) and value > 0, f"optim.{name}", "a finite number > 0", value)
        require(0 < self.pct_start < 1, "optim.pct_start", "in (0, 1)", self.pct_start)
        for name in ("momentum_low", "momentum_high"):
            require(0 <= getattr(self, name) < 1, f"optim.{name}", "in [0, 1)", getattr(self, name))
        require(self.grad_clip_norm >= 0, "optim.grad_clip_norm", ">= 0 (0 disables clipping)", self.grad_clip_norm)


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 4  # per process
    num_workers: int = 2
    amp: bool = False  # mixed precision; CUDA only
    sync_batchnorm: bool = False  # CUDA DDP only
    log_interval: int = 10  # steps
    checkpoint_interval: int = 100  # steps; a checkpoint is also written at every epoch end
    eval_interval: int = 1  # epochs; 0 evaluates only after the last epoch
    best_metric: str = "mAP"
    best_mode: str = "max"  # or "min"
    seed: int = 0
    deterministic: bool = True
    # [ours] CPU: use the cores other processes leave free (rdd3d.engine.threads), up to torch's thread count
    adaptive_threads: bool = True

    def __post_init__(self) -> None:
        for name, least in (("epochs", 1), ("batch_size", 1), ("num_workers", 0), ("log_interval", 1),
                            ("checkpoint_interval", 1), ("eval_interval", 0)):
            value = getattr(self, name)
            require(value >= least, f"trainer.{name}", f">= {least}", value)
        require(self.best_mode in ("max", "min"), "trainer.best_mode", "'max' or 'min'", self.best_mode)
        require(self.seed >= 0, "trainer.seed", ">= 0", self.seed)


class TrainingDivergedError(RuntimeError):
    """A loss term became NaN or Inf; the last good checkpoint is kept."""


class Preempted(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends before it kills a job) arrived while the trainer ran: it
    finished the step it was in, saved ``last.pt`` as on Ctrl-C, and stopped; ``--resume`` continues."""


def _leave_sigterm_to_the_trainer(worker_id: int) -> None:
    # A scheduler signals every process of the job; data workers keep serving until the trainer stops.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class TrainingResult:
    step: int
    epoch: int
    best_metric: float | None
    metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Trainer:
    LAST = "last.pt"
    BEST = "best.pt"

    def __init__(
        self,
        trainee: nn.Module,
        train_set: Dataset,
        config: TrainerConfig,
        optim: OptimConfig,
        output_dir: str | Path,
        context: DistributedContext,
        evaluate: Evaluator | None = None,
        run_config: Mapping | None = None,
        collate=collate_frames,
    ) -> None:
        if config.amp and context.device.type != "cuda":
            raise ValueError("trainer.amp=true needs a CUDA device; mixed precision is not used on CPU")
        self.config = config
        self.context = context
        self.output_dir = Path(output_dir)
        self.evaluate = evaluate
        self.run_config = dict(run_config or {})
        self.train_set = train_set
        self.sampler = ResumableSampler(train_set, context, shuffle=True, seed=config.seed)
        self.loader = DataLoader(
            train_set, batch_size=config.batch_size, sampler=self.sampler, num_workers=config.num_workers,
            collate_fn=collate, drop_last=True, persistent_workers=False,
            worker_init_fn=_leave_sigterm_to_the_trainer,
        )
        self.steps_per_epoch = len(self.sampler) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"training set of {len(train_set)} frames gives no full batch of {config.batch_size} "
                f"per process ({context.world_size} processes)"
            )
        self.total_steps = self.steps_per_epoch * config.epochs

        trainee.to(context.device)
        if config.sync_batchnorm and context.is_distributed and context.device.type == "cuda":
            trainee = nn.SyncBatchNorm.convert_sync_batchnorm(trainee)
        self.trainee = trainee
        self.model = (
            DistributedDataParallel(trainee, device_ids=[context.device.index] if context.device.type == "cuda" else None)
            if context.is_distributed else trainee
        )
        parameters = [p for p in trainee.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr / optim.div_factor, betas=(optim.momentum_high, optim.beta2),
            weight_decay=optim.weight_decay,
        )
        self.optim = optim
        self.cycle_start = 0  # the step the learning-rate cycle began at: 0, or where a finished run was extended
        self.scheduler = self._one_cycle(self.total_steps)
        self.grad_clip_norm = optim.grad_clip_norm
        self.threads = ThreadGovernor() if config.adaptive_threads and context.device.type == "cpu" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
        self.logger = RunLogger(self.output_dir, enabled=context.is_main)
        if context.is_main:  # a run folder has one trainer: temp files of its checkpoints are a killed one's
            for leftover in stale_temp_files(self.output_dir / self.LAST) + stale_temp_files(self.output_dir / self.BEST):
                leftover.unlink(missing_ok=True)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best_value: float | None = None
        self.evaluation_pending = False  # the last epoch's evaluation is due and not yet done
        self._terminated = False  # SIGTERM arrived during fit()
        self.last_metrics: dict[str, float] = {}

    def _one_cycle(self, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
        optim = self.optim
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=optim.lr, total_steps=steps, pct_start=optim.pct_start,
            div_factor=optim.div_factor, final_div_factor=optim.final_div_factor, anneal_strategy="cos",
            cycle_momentum=True, base_momentum=optim.momentum_low, max_momentum=optim.momentum_high,
        )

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "model": self.trainee.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "cycle_start": self.cycle_start,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_value": self.best_value,
            "evaluation_pending": self.evaluation_pending,
            "rng": {
                "torch": torch.get_rng_state(),
                # MT19937 key as a tensor: weights_only checkpoints hold no NumPy objects.
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                "numpy_pos": int(np.random.get_state()[2]),
                "python": list(random.getstate()[1]),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "config": self.run_config,
        }

    def save(self, name: str = LAST) -> Path:
        path = self.output_dir / name
        broken = non_finite_tensors(self.trainee.state_dict())
        if broken:  # a finite loss can still be followed by an update that overflows the weights
            raise TrainingDivergedError(f"step {self.step}: {len(broken)} weight tensors hold NaN or Inf "
                                        f"({', '.join(broken[:3])}); stopped without saving, {self._last_good()}")
        if self.context.is_main:
            save_checkpoint(path, self.state())
        barrier(self.context)
        return path

    def _last_good(self) -> str:
        path = self.output_dir / self.LAST
        return f"the last good checkpoint is {path}" if path.is_file() else "and no checkpoint had been written yet"

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint. One written at the end of a run with fewer epochs than
        ``config.epochs`` is extended: the optimiser's state carries on, and a new one-cycle schedule of the
        same settings runs over the added epochs (a warm restart from the annealed weights)."""
        state = load_checkpoint(path, map_location=self.context.device)
        load_model_state(self.trainee, state["model"], source=str(path))
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.cycle_start = state.get("cycle_start", 0)
        # Building a schedule sets the optimiser's learning rate and momentum: the saved ones are loaded after.
        if self.cycle_start:
            self.scheduler = self._one_cycle(self.total_steps - self.cycle_start)
        self.optimizer.load_state_dict(state["optimizer"])
        finished_cycle = state["scheduler"]["total_steps"] == self.step - self.cycle_start
        if finished_cycle and self.step < self.total_steps:
            self.cycle_start = self.step
            self.scheduler = self._one_cycle(self.total_steps - self.step)
            log.info("extending the finished run %s: epochs %d -> %d; a new one-cycle schedule over steps %d-%d "
                     "(lr up to %g)", path, self.epoch, self.config.epochs, self.step, self.total_steps,
                     self.optim.lr)
        else:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_value = state["best_value"]
        self.evaluation_pending = bool(state.get("evaluation_pending", False))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(("MT19937", rng["numpy"].cpu().numpy().astype(np.uint32), rng["numpy_pos"]))
        random.setstate((3, tuple(rng["python"]), None))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.logger.truncate_after(self.step, keep_evaluation=not self.evaluation_pending)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    # ----------------------------------------------------------------- loop
    def fit(self) -> TrainingResult:
        self._terminated = False
        restore_sigterm = self._catch_sigterm()
        try:
            if self.evaluation_pending:  # the run this one resumes was stopped during its evaluation
                self._evaluate_and_keep_best()
            while self.epoch < self.config.epochs:
                self._train_epoch()
                self.epoch += 1
                self.step_in_epoch = 0
                # The checkpoint says whether this epoch's evaluation is still to come: a run stopped during
                # it resumes with it, not past it.
                self.evaluation_pending = self._evaluation_due()
                self.save()
                if self.evaluation_pending:
                    self._evaluate_and_keep_best()
        except KeyboardInterrupt:
            # The state is consistent between optimiser steps: save it so that --resume continues here.
            self.save()
            log.warning("interrupted: saved %s at step %d", self.output_dir / self.LAST, self.step)
            raise
        finally:
            restore_sigterm()
            self.logger.close()
            if self.threads is not None:
                self.threads.restore()
        return TrainingResult(self.step, self.epoch, self.best_value, self.last_metrics)

    def _catch_sigterm(self) -> Callable[[], None]:
        """While fit() runs, SIGTERM only raises a flag, read between optimiser steps (a handler can only be
        installed from the main thread; elsewhere SIGTERM keeps its default). Returns what puts the
        previous handler back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def note(signum, frame) -> None:
            self._terminated = True

        previous = signal.signal(signal.SIGTERM, note)
        # None: a handler not installed from Python, which cannot be put back; the default is the closest
        return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def _stop_if_terminated(self) -> None:
        terminated = self._terminated
        if self.context.is_distributed:  # every rank stops after the same step, whichever got the signal
            flag = torch.tensor([float(terminated)], device=self.context.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            terminated = bool(flag.item())
        if terminated:
            raise Preempted()

    def _evaluation_due(self) -> bool:
        if self.evaluate is None:
            return False
        last_epoch = self.epoch == self.config.epochs
        interval = self.config.eval_interval
        return last_epoch or (interval > 0 and self.epoch % interval == 0)

    def _train_epoch(self) -> None:
        self.trainee.train()
        self.sampler.set_position(self.epoch, self.step_in_epoch * self.config.batch_size)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        progress = tqdm(
            self.loader, total=self.steps_per_epoch, initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}", disable=not self.context.is_main,
            dynamic_ncols=True, leave=False,
        )
        started, samples = time.perf_counter(), 0
        for batch in progress:
            if self.threads is not None:
                self.threads.update()
            terms = self._optimisation_step(batch.to(self.context.device))
            self.step += 1
            self.step_in_epoch += 1
            samples += batch.batch_size * self.context.world_size
            throughput = samples / max(time.perf_counter() - started, 1e-9)
            total = sum(terms.values())
            progress.set_postfix(loss=f"{total:.3f}", frames_s=f"{throughput:.1f}")
            if self.step % self.config.log_interval == 0 or self.step_in_epoch == self.steps_per_epoch:
                values = {f"loss/{name}": value for name, value in terms.items()}
                values.update({"loss/total": total, "lr": self.scheduler.get_last_lr()[0],
                               "frames_per_s": throughput, "threads": torch.get_num_threads()})
                self.logger.log("train", self.step, self.epoch, values)
            if self.step % self.config.checkpoint_interval == 0 and self.step_in_epoch < self.steps_per_epoch:
                self.save()
            self._stop_if_terminated()

    def _optimisation_step(self, batch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.context.device.type, enabled=self.config.amp):
            terms = self.model(batch)
        values = {name: float(term.detach()) for name, term in terms.items()}
        for name, value in values.items():
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"step {self.step + 1}: loss term '{name}' is {value}; stopped without saving, {self._last_good()}"
                )
        self.scaler.scale(sum(terms.values())).backward()
        if self.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.trainee.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def _evaluate_and_keep_best(self) -> None:
        metrics = dict(self.evaluate(self.trainee, self.context))
        self.trainee.train()
        self.last_metrics = metrics
        self.logger.log("eval", self.step, self.epoch, metrics)
        value = metrics.get(self.config.best_metric)
        if value is None:
            raise KeyError(f"best_metric '{self.config.best_metric}' not among the metrics {sorted(metrics)}")
        better = (self.best_value is None or
                  (value > self.best_value if self.config.best_mode == "max" else value < self.best_value))
        self.evaluation_pending = False
        if better:
            self.best_value = float(value)
            self.save(self.BEST)
        self.save()  # the evaluation is done (and the best value known) for a resumed run too
