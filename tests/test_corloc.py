"""IoU / CorLoc hand cases, and IoU against torchvision.ops.box_iou as an oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunelens._compat import torchvision
from prunelens.discovery.corloc import (SyntheticBoxes, best_iou, box_iou, corloc_hits, pad_boxes,
                                        summarize_corloc)


def test_iou_hand_cases():
    pred = torch.tensor([[0.0, 0, 10, 10]] * 5)
    gt = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [10, 0, 20, 10],
                       [0, 0, 10, 20]]).unsqueeze(1)
    assert box_iou(pred, gt)[:, 0].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0, 0.5])


def test_corloc_is_iou_at_least_half_with_any_box():
    pred = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4]])
    gt, valid = pad_boxes([
        torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 20]]),  # second box: IoU exactly 0.5 -> found
        torch.tensor([[5.0, 0, 15, 10]]),                    # 1/3 -> missed
        torch.tensor([[5.0, 0, 15, 10], [1, 1, 10, 10]]),    # 0.81 with the second -> found
        torch.zeros(0, 4),                                   # no box -> IoU 0
    ])
    best = best_iou(pred, gt, valid)
    assert best.tolist() == pytest.approx([0.5, 1 / 3, 0.81, 0.0])
    assert corloc_hits(best).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_padding_boxes_do_not_count():
    gt, valid = pad_boxes([torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.0, 0, 5, 5], [5, 5, 9, 9]])])
    assert valid.tolist() == [[True, False], [True, True]]
    gt[0, 1] = torch.tensor([0.0, 0, 10, 10])  # garbage in a padded slot is ignored
    assert best_iou(torch.tensor([[0.0, 0, 10, 10]] * 2), gt, valid).tolist() == pytest.approx([0.01, 0.25])


def test_no_box_found_scores_zero():
    best = best_iou(torch.full((1, 4), float("nan")), *pad_boxes([torch.tensor([[0.0, 0, 4, 4]])]))
    assert best.tolist() == [0.0] and corloc_hits(best).tolist() == [0.0]


def test_iou_matches_torchvision_box_iou():
    ops = torchvision().ops
    gen = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 60, (40, 3, 2), generator=gen).double()
    wh = torch.randint(1, 40, (40, 3, 2), generator=gen).double()
    boxes = torch.cat([xy, xy + wh], -1)
    pred, gt = boxes[:, 0], boxes[:, 1:]
    ours = box_iou(pred, gt)
    for i in range(40):
        torch.testing.assert_close(ours[i], ops.box_iou(pred[i:i + 1], gt[i])[0])


def test_summary_counts_and_bootstrap_interval():
    summary = summarize_corloc([1, 0, 1, 1], [0.7, 0.2, 0.5, 0.9], n_skipped=2, n_boot=500)
    assert summary.corloc == 0.75 and summary.mean_iou == pytest.approx(0.575)
    assert (summary.n, summary.n_skipped) == (4, 2)
    assert 0.0 <= summary.ci_low <= 0.75 <= summary.ci_high <= 1.0
    empty = summarize_corloc([], [])
    assert math.isnan(empty.corloc) and empty.n == 0


def test_synthetic_boxes_are_the_mask_boxes():
    from prunelens.data.synthetic import SyntheticShapes

    split = SyntheticShapes("test", 5, 32, 4, 0.5, "standard", 0)
    data = SyntheticBoxes(split, n=3)
    assert len(data) == 3 and data.item_ids == split.item_ids[:3]
    mask = split.masks[2].numpy()
    rows, cols = np.nonzero(mask)
    assert data.boxes(2).tolist() == [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]]
    assert data.image(2).shape == (3, 32, 32) and 0 <= data.image(2).min() <= data.image(2).max() <= 1
