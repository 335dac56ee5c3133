"""RoI pooling and RoIAlign against naive loops written from torchvision's C++ kernels."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from divekit.errors import DivekitError
from divekit.vision import roi as roi_module
from divekit.vision.roi import RoIAlign, RoIPool, roi_align, roi_pool

# ----------------------------------------------------------------------------- naive references


def naive_bilinear(fm: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One bilinear sample of every channel of fm (C, H, W), torchvision's border rules."""
    C, H, W = fm.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return fm.new_zeros(C)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fm[:, y_low, x_low] + hy * lx * fm[:, y_low, x_high]
            + ly * hx * fm[:, y_high, x_low] + ly * lx * fm[:, y_high, x_high])


def naive_roi_align(x: torch.Tensor, rois: torch.Tensor, oh: int, ow: int, scale: float,
                    sampling_ratio: int, aligned: bool) -> torch.Tensor:
    out = []
    offset = 0.5 if aligned else 0.0
    for b, x1, y1, x2, y2 in rois.tolist():
        fm = x[int(b)]
        start_w, start_h = x1 * scale - offset, y1 * scale - offset
        width, height = x2 * scale - offset - start_w, y2 * scale - offset - start_h
        if not aligned:
            width, height = max(width, 1.0), max(height, 1.0)
        bin_h, bin_w = height / oh, width / ow
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(height / oh)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(width / ow)
        count = max(grid_h * grid_w, 1)
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                total = fm.new_zeros(fm.shape[0])
                for iy in range(grid_h):
                    yy = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        xx = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + naive_bilinear(fm, yy, xx)
                bins.append(total / count)
        out.append(torch.stack(bins, 1).view(-1, oh, ow))
    return torch.stack(out) if out else x.new_zeros((0, x.shape[1], oh, ow))


def c_round(v: float) -> int:
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def naive_roi_pool(x: torch.Tensor, rois: torch.Tensor, oh: int, ow: int,
                   scale: float) -> torch.Tensor:
    _, C, H, W = x.shape
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        fm = x[int(b)]
        start_w, start_h = c_round(x1 * scale), c_round(y1 * scale)
        end_w, end_h = c_round(x2 * scale), c_round(y2 * scale)
        bin_h = max(end_h - start_h + 1, 1) / oh
        bin_w = max(end_w - start_w + 1, 1) / ow
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(ph * bin_h) + start_h, 0), H)
                he = min(max(math.ceil((ph + 1) * bin_h) + start_h, 0), H)
                ws = min(max(math.floor(pw * bin_w) + start_w, 0), W)
                we = min(max(math.ceil((pw + 1) * bin_w) + start_w, 0), W)
                if he <= hs or we <= ws:
                    bins.append(fm.new_zeros(C))
                    continue
                best = fm[:, hs, ws]
                for h in range(hs, he):
                    for w in range(ws, we):
                        best = torch.where(fm[:, h, w] > best, fm[:, h, w], best)
                bins.append(best)
        out.append(torch.stack(bins, 1).view(C, oh, ow))
    return torch.stack(out) if out else x.new_zeros((0, C, oh, ow))


# ----------------------------------------------------------------------------------- helpers


def random_rois(gen: torch.Generator, count: int, batch: int, width: float, height: float
                ) -> torch.Tensor:
    """Boxes inside, across the border of and beyond the image, plus tiny and degenerate ones."""
    x1 = torch.rand(count, generator=gen, dtype=torch.float64) * width * 1.4 - width * 0.2
    y1 = torch.rand(count, generator=gen, dtype=torch.float64) * height * 1.4 - height * 0.2
    w = torch.rand(count, generator=gen, dtype=torch.float64) * width * 0.8
    h = torch.rand(count, generator=gen, dtype=torch.float64) * height * 0.8
    b = torch.randint(batch, (count,), generator=gen).double()
    rois = torch.stack([b, x1, y1, x1 + w, y1 + h], 1)
    extra = torch.tensor([[0, 1.2, 2.3, 1.4, 2.35],                  # tiny (well under a cell)
                          [batch - 1, -0.9 * width, 0.1, -0.1 * width, height * 0.5],  # left
                          [0, 0.0, 0.0, width, height],                 # the whole image
                          [batch - 1, 2.0, 3.0, 2.0, 3.0],              # zero size
                          [0, width * 0.6, 1.0, width * 1.5, height * 1.2]],  # beyond the corner
                         dtype=torch.float64)
    return torch.cat([rois, extra])


def compare(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> None:
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(ours, x, upstream)
    (grad_ref,) = torch.autograd.grad(ref, x, upstream)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------- roi_align


@pytest.mark.parametrize("aligned, sampling_ratio, scale", list(itertools.product(
    [False, True], [-1, 1, 2], [1.0, 0.25])))
def test_roi_align_matches_loop_values_and_gradients(aligned, sampling_ratio, scale):
    gen = torch.Generator().manual_seed(int(aligned) * 100 + sampling_ratio * 10 + int(scale * 4))
    x = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, 12, 2, 9 / scale, 7 / scale)
    ours = roi_align(x, rois, (3, 2), scale, sampling_ratio, aligned)
    ref = naive_roi_align(x, rois, 3, 2, scale, sampling_ratio, aligned)
    assert ours.shape == (len(rois), 3, 3, 2)
    compare(ours, ref, x, gen)


@pytest.mark.parametrize("aligned, sampling_ratio", [(False, -1), (True, -1), (True, 2)])
def test_roi_align_gradcheck(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.1, 3.9], [1, -1.5, 2.2, 3.3, 6.5],
                         [1, 2.0, 1.0, 9.0, 4.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, 2, 1.0, sampling_ratio, aligned), (x,))


def test_roi_align_of_a_linear_map_is_the_map_at_bin_centres():
    # Bilinear sampling reproduces a linear function exactly, so each bin's average is the
    # function at the bin's centre. Aligned: box (1, 1)-(5, 5) spans cell coordinates 0.5-4.5,
    # two bins of 2 per axis, centres 1.5 and 3.5; F[y, x] = x + 10 y.
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    x = (xs + 10 * ys)[None, None]
    out = roi_align(x, torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]]), 2, aligned=True)
    assert torch.allclose(out[0, 0], torch.tensor([[16.5, 18.5], [36.5, 38.5]]))


def test_roi_align_samples_on_the_border_rules():
    # One sample per box at its centre: x = -1 and x = W still read the border column (clamped),
    # just beyond them reads 0; the same along y.
    x = torch.arange(1.0, 13.0).view(1, 1, 3, 4)  # rows [1..4], [5..8], [9..12]
    centres = [(-1.0, 1.0), (4.0, 1.0), (-1.01, 1.0), (4.01, 1.0), (1.5, -1.0), (1.5, 3.0),
               (1.5, 3.01)]
    rois = torch.tensor([[0, cx - 1, cy - 1, cx + 1, cy + 1] for cx, cy in centres])
    out = roi_align(x, rois, 1, 1.0, 1, False).flatten()
    expected = naive_roi_align(x.double(), rois.double(), 1, 1, 1.0, 1, False).flatten()
    assert out.tolist() == expected.tolist() == [5.0, 8.0, 0.0, 0.0, 2.5, 10.5, 0.0]


def test_roi_align_groups_boxes_by_sample_grid():
    # Many small boxes (a 1 x 1 grid) and two large ones: the adaptive path runs one pass per
    # grid size instead of padding every box to the largest grid; values stay the same.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 20, 20, generator=gen, dtype=torch.float64, requires_grad=True)
    small = torch.cat([torch.randint(2, (30, 1), generator=gen).double(),
                       torch.rand(30, 2, generator=gen, dtype=torch.float64) * 15], 1)
    small = torch.cat([small, small[:, 1:] + 1.5], 1)
    large = torch.tensor([[0, 0.5, 0.5, 19.0, 18.0], [1, 2.0, 1.0, 12.0, 19.5]],
                         dtype=torch.float64)
    rois = torch.cat([large[:1], small, large[1:]])
    ours = roi_align(x, rois, 2, 1.0, -1, False)
    compare(ours, naive_roi_align(x, rois, 2, 2, 1.0, -1, False), x, gen)


def test_roi_align_chunks_many_boxes(monkeypatch):
    monkeypatch.setattr(roi_module, "_CHUNK_ELEMENTS", 500)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, 9, 1, 6, 6)
    for fn, ref in ((lambda: roi_align(x, rois, 2, 1.0, 2, True),
                     lambda: naive_roi_align(x, rois, 2, 2, 1.0, 2, True)),
                    (lambda: roi_pool(x, rois, 2), lambda: naive_roi_pool(x, rois, 2, 2, 1.0))):
        compare(fn(), ref(), x, gen)


def test_list_of_boxes_equals_batch_index_rows():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, 8, 8, generator=gen, dtype=torch.float64)
    per_image = [torch.rand(4, 2, generator=gen, dtype=torch.float64).repeat(1, 2)
                 + torch.tensor([0, 0, 3.0, 2.0], dtype=torch.float64) for _ in range(3)]
    per_image[1] = per_image[1][:0]  # an image without boxes
    rows = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                      for i, b in enumerate(per_image)])
    for fn in (lambda b: roi_align(x, b, 3, 0.5, 2), lambda b: roi_pool(x, b, 3, 0.5)):
        assert torch.equal(fn(per_image), fn(rows))


def test_float32_matches_float64():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 4, 10, 10, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 10, 2, 40, 40)
    for fn in (lambda t, r: roi_align(t, r, 3, 0.25, -1, True),
               lambda t, r: roi_pool(t, r, 3, 0.25)):
        torch.testing.assert_close(fn(x.float(), rois.float()), fn(x, rois).float(),
                                   rtol=1e-5, atol=1e-5)


def test_half_precision_is_computed_in_float32():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 3, 40, 40, generator=gen)
    rois = torch.tensor([[0, 101.3, 57.9, 150.2, 140.6]])  # corners bfloat16 cannot hold
    for fn in (lambda t: roi_align(t, rois, 3, 0.25, 2, True),
               lambda t: roi_pool(t, rois, 3, 0.25)):
        low = fn(x.bfloat16())
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), fn(x.bfloat16().float()), rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------------- roi_pool


@pytest.mark.parametrize("scale, output", list(itertools.product([1.0, 0.5, 0.25],
                                                                  [(2, 2), (3, 2)])))
def test_roi_pool_matches_loop_values_and_gradients(scale, output):
    gen = torch.Generator().manual_seed(int(scale * 8) + output[0])
    x = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, 12, 2, 9 / scale, 7 / scale)
    if scale == 0.5:  # odd integer corners land on halves: C's round goes away from zero
        rois[:4, 1:] = torch.tensor([[1.0, 3.0, 5.0, 7.0], [-3.0, -1.0, 9.0, 11.0],
                                     [5.0, 5.0, 5.0, 5.0], [7.0, 1.0, 13.0, 13.0]])
    ours = roi_pool(x, rois, output, scale)
    ref = naive_roi_pool(x, rois, *output, scale)
    compare(ours, ref, x, gen)


def test_roi_pool_worked_example():
    # Box (0, 0)-(4, 4) covers 5 x 5 cells; 2 x 2 bins of 2.5 cells take rows and columns
    # [0, 3) and [2, 5): the maxima of arange(25) are at (2, 2), (2, 4), (4, 2), (4, 4).
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = roi_pool(x, torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]]), 2)
    assert torch.equal(out[0, 0], torch.tensor([[12.0, 14.0], [22.0, 24.0]]))
    # Entirely off the map: every bin is empty and gives 0.
    assert torch.equal(roi_pool(x, torch.tensor([[0, 9.0, 9.0, 12.0, 12.0]]), 2),
                       torch.zeros(1, 1, 2, 2))


# ------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("boxes", [torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]])
def test_empty_box_list(boxes):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    for out in (roi_align(x, boxes, (2, 3)), roi_pool(x, boxes, (2, 3))):
        assert out.shape == (0, 3, 2, 3)
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_modules_call_the_functions():
    x = torch.randn(1, 2, 6, 6)
    rois = torch.tensor([[0, 0.5, 1.0, 5.0, 4.0]])
    assert torch.equal(RoIAlign(2, 1.0, 2, True)(x, rois), roi_align(x, rois, 2, 1.0, 2, True))
    assert torch.equal(RoIPool(2, 1.0)(x, rois), roi_pool(x, rois, 2, 1.0))
    assert "sampling_ratio=2" in repr(RoIAlign(2, 1.0, 2, True))


@pytest.mark.parametrize("boxes, message", [
    (torch.zeros(3, 4), "(K, 5)"),
    ([torch.zeros(1, 4)], "box tensors for a batch of 2"),
    ([torch.zeros(1, 4), torch.zeros(1, 5)], "boxes[1]"),
    (torch.tensor([[2.0, 0, 0, 1, 1]]), "batch index"),
    (torch.tensor([[-1.0, 0, 0, 1, 1]]), "batch index"),
])
def test_bad_boxes_are_named(boxes, message):
    x = torch.zeros(2, 1, 4, 4)
    for fn in (roi_align, roi_pool):
        with pytest.raises(DivekitError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            fn(x, boxes, 2)


def test_bad_input_and_output_size():
    with pytest.raises(DivekitError, match="feature map"):
        roi_align(torch.zeros(1, 4, 4), torch.zeros(0, 5), 2)
    with pytest.raises(DivekitError, match="output_size"):
        roi_pool(torch.zeros(1, 1, 4, 4), torch.zeros(0, 5), (2, 0))


@pytest.mark.parametrize("ratio", [0.0, math.inf])
@pytest.mark.parametrize("aligned, sampling_ratio", [(False, -1), (True, -1), (True, 2),
                                                     (False, 1)])
def test_roi_align_both_paths_match_loop(monkeypatch, ratio, aligned, sampling_ratio):
    # 0 forces grid_sample, inf the separable matrix products; maps one cell high or wide too.
    monkeypatch.setattr(roi_module, "_SEPARABLE_RATIO", ratio)
    gen = torch.Generator().manual_seed(11 + sampling_ratio)
    for shape in ((2, 3, 7, 9), (2, 2, 1, 5), (2, 2, 4, 1)):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
        rois = random_rois(gen, 10, 2, shape[3] / 0.5, shape[2] / 0.5)
        rois = rois[torch.randperm(len(rois), generator=gen)]  # unsorted batch indices
        ours = roi_align(x, rois, (3, 2), 0.5, sampling_ratio, aligned)
        compare(ours, naive_roi_align(x, rois, 3, 2, 0.5, sampling_ratio, aligned), x, gen)
