"""What the distillation benchmarks share: training batches of a synthetic world cropped to a detector's
range, and a trained teacher with a student (a preset or a checkpoint) and batches of the teacher's world."""
from pathlib import Path

import torch

from rdd3d.data.collate import DetectionBatch, collate_frames
from rdd3d.data.synthetic import SyntheticDataset, WorldConfig
from rdd3d.data.transforms import crop_to_range
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.models.presets import build_detector


def synthetic_batches(world: WorldConfig, point_cloud_range, batch_size: int, batches: int) -> list[DetectionBatch]:
    """``batches`` batches of the world's first training frames (seed 0), cropped to ``point_cloud_range``."""
    frames = SyntheticDataset("train", batch_size * batches, seed=0, config=world)
    cropped = [crop_to_range(frame, point_cloud_range) for frame in frames]
    return [collate_frames(cropped[start:start + batch_size]) for start in range(0, len(cropped), batch_size)]


def teacher_student_batches(teacher_checkpoint: str, student: str, batch_size: int,
                            batches: int) -> tuple[torch.nn.Module, torch.nn.Module, list[DetectionBatch]]:
    """``student``: a checkpoint path, or a preset built untrained for the synthetic world."""
    teacher, teacher_config = detector_from_checkpoint(teacher_checkpoint)
    student_model = (detector_from_checkpoint(student)[0] if Path(student).is_file()
                     else build_detector(student, "synthetic"))
    return teacher, student_model, synthetic_batches(teacher_config.data.world, teacher.point_cloud_range,
                                                     batch_size, batches)
