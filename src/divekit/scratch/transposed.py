"""Transposed convolution (d2l 14.10): the layer that makes feature maps larger.

A convolution slides a window over the input and sums what it sees; a transposed convolution
goes the other way: every input element *paints* a copy of the kernel, scaled by its value,
onto the output, and overlapping copies add up. With stride ``s`` the copies are painted ``s``
pixels apart, and ``padding`` crops rows and columns from the border of the painted result.

The name comes from the matrix view (:func:`conv_matrix`): a convolution is ``y = W x`` for a
sparse matrix ``W`` built from the kernel, and the transposed convolution with the same kernel
is ``x' = W^T y``, which is also why it is the gradient of the convolution with respect to its
input. Shapes and arithmetic follow Dumoulin & Visin (2016), "A guide to convolution
arithmetic for deep learning"; the weight layout is PyTorch's ``(C_in, C_out, kh, kw)``.
"""

from __future__ import annotations

import torch

from divekit.errors import DivekitError
from divekit.scratch.conv import IntPair, _pair


def trans_conv(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """2-D transposed convolution of one input with one kernel (no padding, stride 1).

    Args:
        X: input of shape (h, w).
        K: kernel of shape (kh, kw).

    Returns:
        Y of shape (h + kh - 1, w + kw - 1): the sum over input elements ``(i, j)`` of
        ``X[i, j] * K`` placed with its top-left corner at ``(i, j)``.
    """
    if X.dim() != 2 or K.dim() != 2:
        raise DivekitError(f"trans_conv takes 2-D X and K, got shapes {tuple(X.shape)} and "
                           f"{tuple(K.shape)}")
    kh, kw = K.shape
    Y = X.new_zeros(X.shape[0] + kh - 1, X.shape[1] + kw - 1)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            Y[i:i + kh, j:j + kw] += X[i, j] * K
    return Y


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntPair = 1, padding: IntPair = 0) -> torch.Tensor:
    """Multi-channel, batched 2-D transposed convolution with stride and padding.

    The same sum as :func:`trans_conv`, ordered the other way round: instead of one loop step
    per input element, one step per kernel entry ``(a, b)``, which every input element
    ``(i, j)`` paints at ``(i * sh + a, j * sw + b)`` - a strided slice of the output that all
    input elements fill at once.

    Args:
        x: input of shape (N, C_in, H, W).
        weight: kernels of shape (C_in, C_out, kh, kw) (PyTorch's layout for this layer).
        bias: optional shape (C_out,), added to every position of its output channel.
        stride: distance between the painted copies, int or (sh, sw).
        padding: rows (columns) cropped from each side of the painted output, int or (ph, pw).

    Returns:
        Shape (N, C_out, H_out, W_out) with ``H_out = (H - 1) * sh - 2 * ph + kh`` (same for W)
        and ``Y[n, o] = sum_{c, i, j} x[n, c, i, j] * weight[c, o]`` placed at
        ``(i * sh - ph, j * sw - pw)``, plus ``bias[o]``.
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise DivekitError(f"conv_transpose2d takes x (N, C_in, H, W) and weight "
                           f"(C_in, C_out, kh, kw), got shapes {tuple(x.shape)} and "
                           f"{tuple(weight.shape)}")
    if x.shape[1] != weight.shape[0]:
        raise DivekitError(f"x has {x.shape[1]} channels but weight expects {weight.shape[0]} "
                           f"(its layout is (C_in, C_out, kh, kw))")
    N, _, H, W = x.shape
    _, C_out, kh, kw = weight.shape
    if bias is not None and bias.shape != (C_out,):
        raise DivekitError(f"bias must have shape ({C_out},), got {tuple(bias.shape)}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1:
        raise DivekitError(f"stride must be positive, got {stride!r}")
    if ph < 0 or pw < 0:
        raise DivekitError(f"padding must be non-negative, got {padding!r}")
    full_h, full_w = (H - 1) * sh + kh, (W - 1) * sw + kw
    if full_h - 2 * ph < 1 or full_w - 2 * pw < 1:
        raise DivekitError(f"padding {padding!r} crops away the whole ({full_h}, {full_w}) "
                           f"output; use a padding below half of it")
    full = x.new_zeros(N, C_out, full_h, full_w)
    for a in range(kh):
        for b in range(kw):
            painted = torch.einsum("ncij,co->noij", x, weight[:, :, a, b])
            full[:, :, a:a + (H - 1) * sh + 1:sh, b:b + (W - 1) * sw + 1:sw] += painted
    Y = full[:, :, ph:full_h - ph, pw:full_w - pw]
    if bias is not None:
        Y = Y + bias.reshape(1, -1, 1, 1)
    return Y


def conv_matrix(kernel: torch.Tensor, input_shape: tuple[int, int]) -> torch.Tensor:
    """The matrix ``W`` of a single-channel convolution (stride 1, no padding): ``y = W x``.

    Row ``i * w' + j`` holds the kernel at the input positions that output ``(i, j)`` sees, and
    zeros elsewhere, so ``W @ x.flatten()`` is the convolution of ``x`` and
    ``W.T @ y.flatten()`` is the transposed convolution of ``y`` with the same kernel.

    Args:
        kernel: shape (kh, kw).
        input_shape: (h, w), at least the kernel's size.

    Returns:
        Shape (h' * w', h * w) with ``h' = h - kh + 1`` and ``w' = w - kw + 1``; gradients flow
        to ``kernel``.
    """
    if kernel.dim() != 2:
        raise DivekitError(f"conv_matrix takes a 2-D kernel, got shape {tuple(kernel.shape)}")
    h, w = _pair(input_shape, "input_shape")
    kh, kw = kernel.shape
    if kh > h or kw > w:
        raise DivekitError(f"kernel {tuple(kernel.shape)} is larger than the input ({h}, {w})")
    out_h, out_w = h - kh + 1, w - kw + 1
    W = kernel.new_zeros(out_h * out_w, h, w)
    for i in range(out_h):
        for j in range(out_w):
            W[i * out_w + j, i:i + kh, j:j + kw] = kernel
    return W.reshape(out_h * out_w, h * w)
