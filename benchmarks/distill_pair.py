"""What the distillation-scale benchmarks share: a trained teacher, a student (a preset or a checkpoint)
and a few training batches of the teacher's synthetic world, cropped to its range."""
from pathlib import Path

import torch

from rdd3d.data.collate import DetectionBatch, collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.data.transforms import crop_to_range
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.models.presets import build_detector


def teacher_student_batches(teacher_checkpoint: str, student: str, batch_size: int,
                            batches: int) -> tuple[torch.nn.Module, torch.nn.Module, list[DetectionBatch]]:
    """``student``: a checkpoint path, or a preset built untrained for the synthetic world."""
    teacher, teacher_config = detector_from_checkpoint(teacher_checkpoint)
    student_model = (detector_from_checkpoint(student)[0] if Path(student).is_file()
                     else build_detector(student, "synthetic"))
    frames = SyntheticDataset("train", batch_size * batches, seed=0, config=teacher_config.data.world)
    return teacher, student_model, [
        collate_frames([crop_to_range(frames[b * batch_size + i], teacher.point_cloud_range)
                        for i in range(batch_size)]) for b in range(batches)]
