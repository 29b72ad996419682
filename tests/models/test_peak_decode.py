"""Heatmap and anchor peaks (distillation's cheap proposals) against the full decode on constructed maps."""

import torch

from rdd3d.core.types import ClassTable
from rdd3d.models.heads import AnchorHeadConfig, AnchorPrediction, CenterHeadConfig, DecodeConfig, NMSConfig
from rdd3d.models.heads.anchor_head import AnchorHead
from rdd3d.models.heads.center_head import CenterHead
from rdd3d.models.heads.decode import peak_cells
from rdd3d.models.heads.prediction import TaskPrediction

CLASSES = ClassTable(("car", "truck", "pedestrian"))
RANGE = (-8.0, -8.0, -3.0, 8.0, 8.0, 3.0)


def _centre_head() -> CenterHead:
    config = CenterHeadConfig(class_groups=(("car", "truck"), ("pedestrian",)), head_channels=8,
                              decode=DecodeConfig(nms=NMSConfig(kind="rotated", iou_threshold=0.2)))
    return CenterHead(8, CLASSES, RANGE, (0.25, 0.25, 0.2), 2, config)  # 0.5 m cells, 32 x 32


def _logit(probability: float) -> float:
    return float(torch.logit(torch.tensor(probability)))


def _predictions(peaks, batch=2, size=32):
    """Two tasks of flat low heatmaps with a bump (3x3, its centre highest) at each ``(sample, task, class,
    row, column, score)``; random box codes."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.full((batch, classes, size, size), _logit(0.02)) for classes in (2, 1)]
    for sample, task, channel, row, column, score in peaks:
        maps[task][sample, channel, row - 1:row + 2, column - 1:column + 2] = _logit(score * 0.6)
        maps[task][sample, channel, row, column] = _logit(score)

    def codes(channels):
        return torch.randn(batch, channels, size, size, generator=generator) * 0.3

    return tuple(TaskPrediction(heatmap, codes(2), codes(1), codes(3), codes(2), None) for heatmap in maps)


def test_peak_cells_are_local_maxima_best_first_above_the_threshold():
    scores = torch.zeros(1, 6, 6)
    scores[0, 1, 1], scores[0, 1, 2] = 0.9, 0.5  # the 0.5 neighbours the 0.9: no peak
    scores[0, 4, 4] = 0.3
    scores[0, 4, 0] = 0.05  # a peak under the threshold
    cells, values, keep = peak_cells(scores, max_per_sample=3, score_threshold=0.1)
    assert cells[0, keep[0]].tolist() == [1 * 6 + 1, 4 * 6 + 4]
    assert values[0, keep[0]].tolist() == [0.8999999761581421, 0.30000001192092896]


def test_centre_peaks_are_the_confident_detections_of_the_full_decode():
    head = _centre_head()
    peaks = [(0, 0, 0, 5, 5, 0.9), (0, 0, 1, 20, 8, 0.7), (0, 1, 0, 12, 25, 0.5), (1, 1, 0, 3, 30, 0.8)]
    predictions = _predictions(peaks)
    found = head.decode_peaks(predictions, max_per_sample=10, score_threshold=0.3)
    full = head.decode(predictions)
    for sample in range(2):
        expected = [p for p in peaks if p[0] == sample]
        assert len(found[sample].boxes) == len(expected)
        # Best first, with the class the bump was drawn in, labels as ClassTable indices.
        assert found[sample].labels.tolist() == [{(0, 0): 0, (0, 1): 1, (1, 0): 2}[(p[1], p[2])]
                                                 for p in sorted(expected, key=lambda p: -p[5])]
        # Each peak box is the full decode's box of that cell, score and all.
        reference = full[sample]
        for box, score in zip(found[sample].boxes, found[sample].scores):
            same = (reference.boxes - box).abs().amax(dim=1) < 1e-5
            assert same.any() and torch.isclose(reference.scores[same][0], score)


def test_centre_peaks_are_class_agnostic_across_tasks():
    head = _centre_head()
    # The same cell is a bump in task 0 (car, 0.8) and task 1 (pedestrian, 0.6): one proposal, the car.
    predictions = _predictions([(0, 0, 0, 10, 10, 0.8), (0, 1, 0, 10, 10, 0.6)], batch=1)
    found = head.decode_peaks(predictions, max_per_sample=10, score_threshold=0.3)[0]
    assert found.labels.tolist() == [0] and torch.isclose(found.scores, torch.tensor([0.8])).all()
    codes = predictions[0].box_code()[0, :, 10, 10]
    assert torch.isclose(found.boxes[0, 3:6], codes[3:6].exp()).all()  # the car task's sizes


def test_anchor_peaks_are_the_best_anchor_of_each_local_maximum():
    config = AnchorHeadConfig()
    head = AnchorHead(8, ClassTable(("Car", "Pedestrian", "Cyclist")), (0.0, -8.0, -3.0, 16.0, 8.0, 1.0), config)
    types, classes, size = head.num_anchor_types, 3, (4, 4)
    generator = torch.Generator().manual_seed(1)
    logits = torch.full((1, types * classes, *size), _logit(0.02))
    logits[0, 2 * classes + 1, 1, 2] = _logit(0.9)  # anchor type 2, class 1 at row 1, column 2
    logits[0, 0 * classes + 0, 3, 0] = _logit(0.6)
    logits[0, 1 * classes + 0, 1, 1] = _logit(0.5)  # beside the 0.9: not a peak
    prediction = AnchorPrediction(logits, torch.randn(1, types * 7, *size, generator=generator) * 0.1,
                                  torch.randn(1, types * 2, *size, generator=generator))
    found = head.decode_peaks(prediction, max_per_sample=5, score_threshold=0.3)[0]
    assert found.labels.tolist() == [1, 0]
    every_box = head.decode_boxes(prediction)[0]  # (H * W * A, 7), rows (row * W + column) * A + type
    torch.testing.assert_close(found.boxes, every_box[[(1 * 4 + 2) * types + 2, (3 * 4 + 0) * types + 0]])
