"""Has a run converged? Learning curves from a run's log and the converged benchmark's criteria.

A run has converged when the last two evaluations, at 75 % and 100 % of its schedule, differ by less than
``plateau`` mAP and, where the same run was also trained for twice the schedule, doubling it adds less
than ``doubling`` mAP. A teacher has also learnt its box code when its translation and orientation errors
(and its velocity error, with more than one sweep) are below the limits of :class:`ConvergenceCriteria`.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rdd3d.core.checkpoint import load_checkpoint
from rdd3d.core.fileio import write_bytes, write_json
from rdd3d.engine.run_logging import read_log


@dataclass(frozen=True)
class ConvergenceCriteria:
    plateau: float = 0.01  # mAP (fraction) between the evaluations at 75 % and 100 % of the schedule
    doubling: float = 0.02  # mAP a run of twice the schedule may add
    max_orientation_error: float = 0.5  # rad, mAOE of a teacher
    max_translation_error: float = 0.35  # m, mATE of a teacher
    max_velocity_error: float = 1.0  # m/s, mAVE of a teacher with more than one sweep


@dataclass(frozen=True)
class Curve:
    """One run's evaluations, in order."""

    name: str
    epochs: int  # the schedule
    sweeps: int  # LiDAR sweeps per frame (velocity is only learnable from more than one)
    evaluations: list[dict]  # {"epoch", "step", "mAP", "NDS", "err/...": ...}

    @classmethod
    def of(cls, name: str, run: str | Path) -> "Curve":
        run = Path(run)
        config = load_checkpoint(run / "last.pt")["config"]
        evaluations = [{key: value for key, value in record.items() if key == "epoch" or key == "step"
                        or key in ("mAP", "NDS") or key.startswith("err/")}
                       for record in read_log(run / "log.jsonl", "eval")]
        return cls(name, int(config["trainer"]["epochs"]), int(config["data"]["world"]["lidar"]["num_sweeps"]),
                   evaluations)

    def at_epoch(self, epoch: int) -> dict | None:
        return next((e for e in self.evaluations if e["epoch"] == epoch), None)


@dataclass(frozen=True)
class Verdict:
    name: str
    final_mAP: float | None
    plateau_gap: float | None  # mAP at 100 % minus at 75 % of the schedule (None: no evaluation at 75 %)
    doubling_gain: float | None  # mAP of the doubled run minus this one's (None: no doubled run)
    box_code: dict[str, float]  # the final TP errors checked (teachers)
    problems: list[str]

    @property
    def converged(self) -> bool:
        return not self.problems


def judge(curve: Curve, criteria: ConvergenceCriteria = ConvergenceCriteria(), doubled: Curve | None = None,
          teacher: bool = False) -> Verdict:
    """The verdict on ``curve`` (and on ``doubled``, the same run at twice the schedule, where there is one)."""
    problems = []
    final = curve.at_epoch(curve.epochs)
    three_quarters = curve.at_epoch(round(0.75 * curve.epochs))
    if final is None:
        problems.append(f"no evaluation at the end of the schedule (epoch {curve.epochs})")
    if three_quarters is None:
        problems.append(f"no evaluation at 75 % of the schedule (epoch {round(0.75 * curve.epochs)}): set "
                        "trainer.eval_interval to divide it")
    gap = final["mAP"] - three_quarters["mAP"] if final and three_quarters else None
    if gap is not None and abs(gap) >= criteria.plateau:
        problems.append(f"mAP still moves: {100 * gap:+.2f} between 75 % and 100 % of the schedule "
                        f"(limit ±{100 * criteria.plateau:.1f})")
    gain = None
    if doubled is not None and final is not None and doubled.at_epoch(doubled.epochs) is not None:
        gain = doubled.at_epoch(doubled.epochs)["mAP"] - final["mAP"]
        if gain >= criteria.doubling:
            problems.append(f"twice the schedule adds {100 * gain:+.2f} mAP (limit {100 * criteria.doubling:.1f})")
    box_code = {}
    if teacher and final is not None:
        limits = {"err/trans_err": criteria.max_translation_error, "err/orient_err": criteria.max_orientation_error}
        if curve.sweeps > 1:
            limits["err/vel_err"] = criteria.max_velocity_error
        for key, limit in limits.items():
            box_code[key] = final.get(key, float("nan"))
            if not box_code[key] <= limit:
                problems.append(f"{key} {box_code[key]:.3f} above {limit}: the box code is not learnt")
    return Verdict(curve.name, None if final is None else final["mAP"], gap, gain, box_code, problems)


def write_convergence_report(out_dir: str | Path, curves: Sequence[Curve], verdicts: Mapping[str, Verdict],
                             criteria: ConvergenceCriteria) -> None:
    """``convergence.json`` (every evaluation and verdict) and ``convergence.png`` (mAP per epoch)."""
    out_dir = Path(out_dir)
    write_json(out_dir / "convergence.json", {
        "criteria": asdict(criteria),
        "runs": [{**asdict(curve), "verdict": {**asdict(verdicts[curve.name]),
                                               "converged": verdicts[curve.name].converged}}
                 for curve in curves],
    })
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for curve in curves:
        axes.plot([e["epoch"] for e in curve.evaluations], [100 * e["mAP"] for e in curve.evaluations],
                  marker="o", label=f"{curve.name} ({'converged' if verdicts[curve.name].converged else 'not yet'})")
        axes.axvline(0.75 * curve.epochs, color="grey", alpha=0.2)
    axes.set(xlabel="epoch", ylabel="mAP (%)", title="learning curves (tune split)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes(out_dir / "convergence.png", buffer.getvalue())
