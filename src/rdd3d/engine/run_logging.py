"""Run logs: TensorBoard scalars for people, a JSON-lines file for scripts (rank 0 only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from rdd3d.core.fileio import atomic_open


class RunLogger:
    """Writes every record to ``log.jsonl`` (one JSON object a line) and TensorBoard.

    Records: ``{"kind": "train", "step", "epoch", "lr", "loss/<term>": ...}`` every logging
    interval and ``{"kind": "eval", "step", "epoch", "<metric>": ...}`` after each evaluation.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self._writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, kind: str, step: int, epoch: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch}
        record.update({key: _plain(value) for key, value in values.items()})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def truncate_after(self, step: int, keep_evaluation: bool = True) -> None:
        """On resume: drop records a crashed run wrote after the checkpoint it resumes from, and, when that
        checkpoint's evaluation is to be redone (``keep_evaluation=False``), the evaluation logged at its step."""
        if not self.enabled or not self.path.exists():
            return
        # A process killed while appending leaves a torn last line: what it held is after the checkpoint anyway.
        kept = [json.dumps(record) + "\n" for record in read_log(self.path, torn_end=True)
                if record["step"] < step or (record["step"] == step and (keep_evaluation or record["kind"] != "eval"))]
        with atomic_open(self.path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_log(path: str | Path, kind: str | None = None, torn_end: bool = False) -> list[dict]:
    """The records of a ``log.jsonl``, optionally only those of one kind. A line that is not a JSON record
    is an error naming the file and the line; with ``torn_end`` an unterminated last line (a writer killed
    mid-line) is skipped instead."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")  # a complete file ends with "\n": its last piece is empty
    records = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if torn_end and number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not a JSON record ({error.msg}); "
                             f"the run log is damaged") from None
    return [record for record in records if kind is None or record["kind"] == kind]


def _plain(value):
    return float(value) if hasattr(value, "__float__") and not isinstance(value, (int, bool)) else value
