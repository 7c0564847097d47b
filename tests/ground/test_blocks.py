"""Tests of the shared model blocks: window geometry, targets, encodings, decoding."""

from __future__ import annotations

import math

import pytest
import torch

from ground.models.blocks import (
    FractionalPositionalEncoding,
    MaskedAttention,
    Predictions,
    Projection,
    check_nonempty,
    clips_in_windows,
    decode_spans,
    gaussian_boundary_targets,
    log_softmax_masked,
    longest_window,
    masked_max,
    masked_mean,
    nms_1d,
    sinusoidal_encoding,
    temporal_iou,
    top_k_windows,
)


def one_fps_timestamps(n_clips: int) -> torch.Tensor:
    """(n_clips, 2) windows [i, i + 1) seconds."""
    start = torch.arange(n_clips, dtype=torch.float32)
    return torch.stack([start, start + 1], dim=-1)


# ---- temporal IoU ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0.0, 2.0], [0.0, 2.0], 1.0),  # identical
        ([0.0, 2.0], [3.0, 5.0], 0.0),  # disjoint
        ([0.0, 2.0], [2.0, 4.0], 0.0),  # touching
        ([0.0, 2.0], [1.0, 3.0], 1.0 / 3.0),  # half overlap: 1 / (2 + 2 - 1)
        ([0.0, 4.0], [1.0, 2.0], 0.25),  # contained
        ([12.0, 19.5], [12.0, 20.0], 7.5 / 8.0),
        ([3.0, 3.0], [3.0, 3.0], 0.0),  # two points: empty union
    ],
)
def test_temporal_iou_hand_cases(a: list[float], b: list[float], expected: float) -> None:
    iou = temporal_iou(torch.tensor([a]), torch.tensor([b]))
    assert iou.shape == (1, 1)
    assert iou.item() == pytest.approx(expected)
    assert temporal_iou(torch.tensor([b]), torch.tensor([a])).item() == pytest.approx(expected)


def test_temporal_iou_is_pairwise_and_batched() -> None:
    a = torch.tensor([[[0.0, 2.0], [1.0, 3.0], [10.0, 11.0]]] * 4)  # (4, 3, 2)
    b = torch.tensor([[[0.0, 2.0], [2.0, 3.0]]] * 4)  # (4, 2, 2)
    iou = temporal_iou(a, b)
    assert iou.shape == (4, 3, 2)
    expected = torch.tensor([[1.0, 0.0], [1 / 3, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(iou[2], expected)


def test_temporal_iou_rejects_reversed_window() -> None:
    with pytest.raises(ValueError, match="end < start"):
        temporal_iou(torch.tensor([[5.0, 1.0]]), torch.tensor([[0.0, 1.0]]))


# ---- NMS ------------------------------------------------------------------------------------


def test_nms_suppresses_overlaps_and_keeps_score_order() -> None:
    windows = torch.tensor([[20.0, 30.0], [0.0, 10.0], [1.0, 10.0], [0.0, 4.0]])
    scores = torch.tensor([0.7, 0.9, 0.8, 0.1])
    # [1, 10] overlaps [0, 10] with IoU 0.9 and goes; [0, 4] has IoU 0.4 and stays.
    assert nms_1d(windows, scores, iou_threshold=0.5).tolist() == [1, 0, 3]
    assert nms_1d(windows, scores, iou_threshold=1.0).tolist() == [1, 2, 0, 3]
    assert nms_1d(windows, scores, iou_threshold=0.0).tolist() == [1, 0]


def test_nms_breaks_ties_by_input_order() -> None:
    windows = torch.tensor([[5.0, 6.0], [0.0, 1.0], [0.0, 1.0], [2.0, 3.0]])
    scores = torch.ones(4)
    assert nms_1d(windows, scores, iou_threshold=0.5).tolist() == [0, 1, 3]


def test_top_k_windows_ranks_suppresses_and_pads() -> None:
    windows = torch.tensor([[0.0, 4.0], [5.0, 6.0], [0.0, 3.9], [7.0, 9.0]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.5])
    # [0, 3.9] (0.7) suppresses [0, 4] (IoU 0.975); [7, 9] ties [0, 4] and comes after it in input.
    kept_w, kept_s = top_k_windows(windows, scores, k=4, nms_iou_threshold=0.7)
    torch.testing.assert_close(kept_w, torch.tensor([[5.0, 6.0], [0.0, 3.9], [7.0, 9.0], [7.0, 9.0]]))
    torch.testing.assert_close(kept_s, torch.tensor([0.9, 0.7, 0.5, float("-inf")]))
    all_w, all_s = top_k_windows(windows, scores, k=3, nms_iou_threshold=None)
    torch.testing.assert_close(all_w, torch.tensor([[5.0, 6.0], [0.0, 3.9], [0.0, 4.0]]))
    with pytest.raises(ValueError, match="no candidate"):
        top_k_windows(windows[:0], scores[:0], k=3, nms_iou_threshold=0.7)


def test_nms_rejects_bad_threshold() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        nms_1d(torch.tensor([[0.0, 1.0]]), torch.ones(1), iou_threshold=1.5)


# ---- targets and window helpers -------------------------------------------------------------


def test_gaussian_targets_peak_at_the_boundary_clip() -> None:
    ts = one_fps_timestamps(30)[None].expand(2, 30, 2)  # (2, 30, 2)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 25:] = False
    start = gaussian_boundary_targets(ts[..., 0], torch.tensor([12.3, 3.0]), 1.0, mask)
    end = gaussian_boundary_targets(ts[..., 1], torch.tensor([19.6, 24.9]), torch.tensor([1.0, 0.5]), mask)
    assert start.argmax(dim=-1).tolist() == [12, 3]  # clip whose start is nearest the boundary
    assert end.argmax(dim=-1).tolist() == [19, 24]  # clip whose end (20.0, 25.0) is nearest
    torch.testing.assert_close(start.sum(-1), torch.ones(2))
    torch.testing.assert_close(end.sum(-1), torch.ones(2))
    assert (end[1, 25:] == 0).all()
    assert (start >= 0).all()
    # Symmetric around the peak.
    assert start[1, 2].item() == pytest.approx(start[1, 4].item())


def test_gaussian_targets_stay_finite_far_from_every_clip() -> None:
    ts = one_fps_timestamps(5)[None]
    mask = torch.ones(1, 5, dtype=torch.bool)
    target = gaussian_boundary_targets(ts[..., 0], torch.tensor([400.0]), 0.01, mask)
    assert torch.isfinite(target).all()
    assert target.argmax().item() == 4


def test_gaussian_targets_reject_bad_sigma_and_empty_rows() -> None:
    ts = one_fps_timestamps(4)[None]
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="sigma_sec"):
        gaussian_boundary_targets(ts[..., 0], torch.tensor([1.0]), 0.0, mask)
    with pytest.raises(ValueError, match="no real clip"):
        gaussian_boundary_targets(ts[..., 0], torch.tensor([1.0]), 1.0, ~mask)


def test_longest_window_takes_first_of_equal_length_and_names_empty_queries() -> None:
    windows = torch.tensor([[[0.0, 2.0], [5.0, 9.0], [10.0, 14.0]], [[1.0, 3.0], [0.0, 50.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    expected = torch.tensor([[5.0, 9.0], [1.0, 3.0]])  # [5, 9] and [10, 14] tie: the first wins
    torch.testing.assert_close(longest_window(windows, mask, ["q1", "q2"]), expected)
    mask[1] = False
    with pytest.raises(ValueError, match="q2"):
        longest_window(windows, mask, ["q1", "q2"])


def test_clips_in_windows_uses_clip_centres() -> None:
    ts = one_fps_timestamps(6)[None]  # centres 0.5 .. 5.5
    windows = torch.tensor([[[1.0, 2.6], [4.9, 6.0], [0.0, 6.0]]])
    inside = clips_in_windows(ts, windows, torch.tensor([[True, True, False]]))
    assert inside[0].tolist() == [False, True, True, False, False, True]


def test_check_nonempty_names_the_query() -> None:
    mask = torch.tensor([[True, False], [False, False], [False, False]])
    with pytest.raises(ValueError, match="qB, qC"):
        check_nonempty(mask, ["qA", "qB", "qC"], "video clips")
    check_nonempty(mask[:1], ["qA"], "video clips")


def test_masked_reductions_ignore_padding() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(x, mask).item() == 2.0
    assert masked_max(x, mask).item() == 3.0
    log_p = log_softmax_masked(torch.tensor([[0.0, 0.0, 7.0]]), mask)
    torch.testing.assert_close(log_p, torch.tensor([[-math.log(2), -math.log(2), 0.0]]))


# ---- encodings and layers -------------------------------------------------------------------


@pytest.mark.parametrize("n_clips", [1, 7, 300, 5000])
def test_fractional_encoding_works_for_any_length(n_clips: int) -> None:
    pe = FractionalPositionalEncoding(dim=32)
    ts = one_fps_timestamps(n_clips)[None].expand(2, n_clips, 2)
    out = pe(ts, torch.tensor([float(n_clips), 2.0 * n_clips]))
    assert out.shape == (2, n_clips, 32)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1.0


def test_fractional_encoding_depends_on_fraction_not_length() -> None:
    pe = FractionalPositionalEncoding(dim=16)
    short = pe(torch.tensor([[[4.0, 6.0]]]), torch.tensor([10.0]))  # centre at half the video
    long = pe(torch.tensor([[[499.0, 501.0]]]), torch.tensor([1000.0]))
    torch.testing.assert_close(short, long)
    other = pe(torch.tensor([[[1.0, 2.0]]]), torch.tensor([10.0]))
    assert not torch.allclose(short, other)


def test_sinusoidal_encoding_shape_and_values() -> None:
    enc = sinusoidal_encoding(torch.arange(5), dim=8)
    assert enc.shape == (5, 8)
    torch.testing.assert_close(enc[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert enc[1, 0].item() == pytest.approx(math.sin(1.0))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(torch.arange(5), dim=7)


def test_masked_attention_ignores_padded_keys() -> None:
    torch.manual_seed(0)
    attn = MaskedAttention(dim=8, num_heads=2, dropout=0.0).eval()
    x = torch.randn(1, 3, 8)
    context = torch.randn(1, 5, 8)
    key_mask = torch.tensor([[True, True, True, False, False]])
    changed = context.clone()
    changed[:, 3:] = 1000.0
    torch.testing.assert_close(attn(x, key_mask, context=context), attn(x, key_mask, context=changed))
    unpadded = attn(x, key_mask[:, :3], context=context[:, :3])
    torch.testing.assert_close(attn(x, key_mask, context=context), unpadded)


def test_projection_names_a_dim_mismatch() -> None:
    proj = Projection(6, 4)
    assert proj(torch.randn(2, 3, 6)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="size 6, got 5"):
        proj(torch.randn(2, 3, 5))


# ---- span decoding --------------------------------------------------------------------------


def decode_one(start: list[float], end: list[float], k: int, max_span_sec: float = 1e9,
               nms: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(start)
    windows, scores = decode_spans(
        torch.tensor([start]), torch.tensor([end]), one_fps_timestamps(n)[None],
        torch.ones(1, n, dtype=torch.bool), torch.tensor([max_span_sec]), k, nms,
    )
    return windows[0], scores[0]


def test_decode_finds_the_peaked_span_with_its_score() -> None:
    start = [0.0, 0.0, 5.0, 0.0, 0.0, 0.0]
    end = [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]
    windows, scores = decode_one(start, end, k=3)
    assert windows[0].tolist() == [2.0, 5.0]
    log_p = torch.log_softmax(torch.tensor(start), 0)[2] + torch.log_softmax(torch.tensor(end), 0)[4]
    assert scores[0].item() == pytest.approx(log_p.item())
    assert (scores[:-1] >= scores[1:]).all()


def test_decode_never_returns_end_before_start() -> None:
    # The best start lies after the best end: the decoder must pick a valid pair instead.
    windows, scores = decode_one([0.0, 0.0, 0.0, 9.0], [9.0, 0.0, 0.0, 0.0], k=10)
    assert (windows[:, 1] > windows[:, 0]).all()
    # [0, 1] and [3, 4] score the same (one strong and one weak boundary each): earlier start wins.
    assert windows[:2].tolist() == [[0.0, 1.0], [3.0, 4.0]]
    assert scores[0].item() == pytest.approx(scores[1].item())
    assert scores[1] > scores[2]


def test_decode_respects_max_span_and_keeps_single_clips() -> None:
    torch.manual_seed(0)
    windows, scores = decode_one(torch.randn(20).tolist(), torch.randn(20).tolist(), k=40, max_span_sec=3.0)
    assert ((windows[:, 1] - windows[:, 0]) <= 3.0 + 1e-6).all()
    # A limit below one clip still leaves the single-clip spans.
    windows, scores = decode_one([0.0] * 4, [0.0] * 4, k=6, max_span_sec=0.5)
    assert (windows[:, 1] - windows[:, 0] == 1.0)[:4].all()
    assert torch.isinf(scores[4:]).all()


def test_decode_ties_prefer_earlier_start_then_shorter() -> None:
    windows, scores = decode_one([0.0] * 3, [0.0] * 3, k=6)
    assert windows.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert torch.unique(scores).numel() == 1


def test_decode_single_clip_video_fills_extra_slots() -> None:
    windows, scores = decode_one([3.0], [-1.0], k=4)
    assert windows.tolist() == [[0.0, 1.0]] * 4
    assert scores[0].item() == 0.0
    assert torch.isinf(scores[1:]).all() and (scores[1:] < 0).all()


def test_decode_ignores_padding_anywhere() -> None:
    start = torch.tensor([[0.0, 100.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 100.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    ts = one_fps_timestamps(4)[None].expand(2, 4, 2)
    windows, scores = decode_spans(start, end, ts, mask, torch.tensor([10.0, 10.0]), 3, None)
    assert windows.shape == (2, 3, 2)
    assert windows[0, 0].tolist() == [2.0, 4.0]
    assert ((windows[0, :, 0] != 1.0) & (windows[0, :, 1] != 2.0)).all()  # never the padded clip 1
    assert (windows[1, :, 1] <= 2.0).all()
    assert torch.isfinite(scores).all()


def test_decode_nms_returns_k_distinct_windows() -> None:
    torch.manual_seed(1)
    n = 60
    windows, scores = decode_one(torch.randn(n).tolist(), torch.randn(n).tolist(), k=10, nms=0.3)
    assert torch.isfinite(scores).all()
    iou = temporal_iou(windows, windows)
    off_diagonal = iou[~torch.eye(10, dtype=torch.bool)]
    assert (off_diagonal <= 0.3 + 1e-6).all()
    assert (scores[:-1] >= scores[1:]).all()


def test_decode_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        decode_one([0.0], [0.0], k=0)


# ---- Predictions ----------------------------------------------------------------------------


def test_predictions_checks_shapes_and_marks_fillers() -> None:
    preds = Predictions(windows=torch.zeros(2, 3, 2), scores=torch.tensor([[0.0, -1.0, -math.inf]] * 2))
    assert preds.window_mask.tolist() == [[True, True, False]] * 2
    with pytest.raises(ValueError, match="scores"):
        Predictions(windows=torch.zeros(2, 3, 2), scores=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="presence"):
        Predictions(windows=torch.zeros(2, 3, 2), scores=torch.zeros(2, 3), presence=torch.zeros(3))


# ---- EIoU loss ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ([0.0, 2.0], [1.0, 3.0], 1 - 1 / 3 + 1 / 9),  # IoU 1/3, enclosing 3, centres 1 apart
        ([0.0, 1.0], [3.0, 5.0], 1 + 3.5**2 / 25 + 1 / 25),  # disjoint: centre and width terms only
        ([2.0, 1.0], [1.0, 2.0], 1 + 0 + (-1 - 1) ** 2 / 1),  # inverted prediction: width -1 vs 1
    ],
)
def test_eiou_loss_hand_cases(pred: list[float], target: list[float], expected: float) -> None:
    from ground.models.blocks import eiou_loss

    loss = eiou_loss(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_eiou_loss_is_scale_free_near_zero_on_a_match_and_has_gradient_without_overlap() -> None:
    from ground.models.blocks import eiou_loss

    pred = torch.tensor([[0.0, 1.0], [2.0, 6.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[3.0, 5.0], [2.0, 6.0]], dtype=torch.float64)
    loss = eiou_loss(pred, target)  # (2,)
    torch.testing.assert_close(eiou_loss(pred * 7.0, target * 7.0), loss, rtol=1e-5, atol=1e-6)
    assert loss[1].item() == pytest.approx(0.0, abs=1e-6)
    loss[0].backward()
    assert pred.grad[0].abs().sum() > 0  # disjoint windows still pull the prediction over
    with pytest.raises(ValueError, match="end < start"):
        eiou_loss(pred.detach(), target.flip(-1))
