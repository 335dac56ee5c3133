"""Convolutions for images (course chapter 7): cross-correlation, padding, stride, channels.

``corr2d`` is the course's readable double loop; ``conv2d`` computes the same thing for a batch
of multi-channel images at once, by cutting the padded input into kernel-sized patches and
contracting every patch with every kernel in one ``einsum``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from divekit.errors import DivekitError

IntPair = int | tuple[int, int]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a (height, width) pair of ints; an int applies to both sides."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if (isinstance(value, Sequence) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return value[0], value[1]
    raise DivekitError(f"{name} must be an int or a pair of ints, got {value!r}")


def pad2d(X: torch.Tensor, padding: IntPair, value: float = 0.0) -> torch.Tensor:
    """Surround the last two dimensions of ``X`` with ``value``.

    Args:
        X: tensor whose last two dimensions are (H, W).
        padding: rows added above and below, columns added left and right (int or pair).
        value: the fill value (0 for convolution and average pooling, -inf for max pooling).

    Returns:
        Shape (..., H + 2 * ph, W + 2 * pw), ``X`` in the middle; gradients flow to ``X``.
    """
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise DivekitError(f"padding must be non-negative, got {padding!r}")
    if ph == pw == 0:
        return X
    H, W = X.shape[-2:]
    out = X.new_full((*X.shape[:-2], H + 2 * ph, W + 2 * pw), value)
    out[..., ph:ph + H, pw:pw + W] = X
    return out


def corr2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """2-D cross-correlation of one input with one kernel (no padding, stride 1).

    Args:
        X: input of shape (H, W).
        K: kernel of shape (kh, kw).

    Returns:
        Y of shape (H - kh + 1, W - kw + 1) with ``Y[i, j] = sum(X[i:i+kh, j:j+kw] * K)``.
    """
    if X.dim() != 2 or K.dim() != 2:
        raise DivekitError(f"corr2d takes 2-D X and K, got shapes {tuple(X.shape)} and "
                           f"{tuple(K.shape)}")
    h, w = K.shape
    if h > X.shape[0] or w > X.shape[1]:
        raise DivekitError(f"kernel {tuple(K.shape)} is larger than the input {tuple(X.shape)}")
    Y = X.new_zeros(X.shape[0] - h + 1, X.shape[1] - w + 1)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def patches2d(X: torch.Tensor, kernel_size: tuple[int, int],
              stride: tuple[int, int]) -> torch.Tensor:
    """Every kernel-sized window of an (already padded) batch of images, as a view.

    Args:
        X: input of shape (N, C, H, W).
        kernel_size: window (kh, kw), at most (H, W).
        stride: step (sh, sw) between neighbouring windows.

    Returns:
        Shape (N, C, H_out, W_out, kh, kw) with ``H_out = (H - kh) // sh + 1`` (same for W);
        entry ``[n, c, i, j]`` is the window whose top-left corner is ``(i * sh, j * sw)``.
    """
    (kh, kw), (sh, sw) = kernel_size, stride
    return X.unfold(2, kh, sh).unfold(3, kw, sw)


def conv2d(X: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntPair = 1, padding: IntPair = 0) -> torch.Tensor:
    """Multi-input, multi-output channel 2-D convolution (cross-correlation) of a batch.

    Args:
        X: input of shape (N, C_in, H, W).
        weight: kernels of shape (C_out, C_in, kh, kw).
        bias: optional shape (C_out,), added to every position of its output channel.
        stride: step between windows, int or (sh, sw).
        padding: zeros added on each side, int or (ph, pw).

    Returns:
        Shape (N, C_out, H_out, W_out) with ``H_out = (H + 2 * ph - kh) // sh + 1`` (same for W)
        and ``Y[n, o, i, j] = sum_{c, a, b} Xpad[n, c, i*sh + a, j*sw + b] * weight[o, c, a, b]
        + bias[o]``.
    """
    if X.dim() != 4 or weight.dim() != 4:
        raise DivekitError(f"conv2d takes X (N, C_in, H, W) and weight (C_out, C_in, kh, kw), "
                           f"got shapes {tuple(X.shape)} and {tuple(weight.shape)}")
    if X.shape[1] != weight.shape[1]:
        raise DivekitError(f"X has {X.shape[1]} channels but weight expects {weight.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise DivekitError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    sh, sw = _pair(stride, "stride")
    if sh < 1 or sw < 1:
        raise DivekitError(f"stride must be positive, got {stride!r}")
    X = pad2d(X, padding)
    kh, kw = weight.shape[-2:]
    if kh > X.shape[2] or kw > X.shape[3]:
        raise DivekitError(f"kernel ({kh}, {kw}) is larger than the padded input "
                           f"({X.shape[2]}, {X.shape[3]})")
    Y = torch.einsum("ncijab,ocab->noij", patches2d(X, (kh, kw), (sh, sw)), weight)
    if bias is not None:
        Y = Y + bias.reshape(1, -1, 1, 1)
    return Y


def conv1x1_as_matmul(X: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a matrix product: a fully connected layer over channels per pixel.

    Args:
        X: input of shape (N, C_in, H, W).
        weight: 1x1 kernels of shape (C_out, C_in, 1, 1).

    Returns:
        Shape (N, C_out, H, W): ``weight[:, :, 0, 0] @ X[n].reshape(C_in, H * W)``, reshaped back.
    """
    if X.dim() != 4 or weight.dim() != 4 or weight.shape[2:] != (1, 1):
        raise DivekitError(f"conv1x1_as_matmul takes X (N, C_in, H, W) and weight "
                           f"(C_out, C_in, 1, 1), got shapes {tuple(X.shape)} and "
                           f"{tuple(weight.shape)}")
    if X.shape[1] != weight.shape[1]:
        raise DivekitError(f"X has {X.shape[1]} channels but weight expects {weight.shape[1]}")
    N, C_in, H, W = X.shape
    Y = weight.reshape(weight.shape[0], C_in) @ X.reshape(N, C_in, H * W)
    return Y.reshape(N, -1, H, W)


def learn_edge_kernel(X: torch.Tensor, Y: torch.Tensor,
                      kernel_size: tuple[int, int] = (1, 2), lr: float = 3e-2,
                      steps: int = 30, seed: int = 0) -> torch.Tensor:
    """Learn the kernel that maps ``X`` to ``Y`` by gradient descent on the squared error.

    The course's example: ``X`` is a 6x8 image of ones with zeros in columns 2..5 and
    ``Y = corr2d(X, [[1, -1]])`` marks its two vertical edges; descent recovers ``[1, -1]``.

    Args:
        X: input image of shape (H, W).
        Y: target of shape (H - kh + 1, W - kw + 1).
        kernel_size: (kh, kw) of the kernel to learn.
        lr: step size of plain gradient descent.
        steps: number of full-batch descent steps.
        seed: seeds the random start of the kernel.

    Returns:
        The learned kernel of shape (kh, kw), detached from the graph.
    """
    if X.dim() != 2 or Y.dim() != 2:
        raise DivekitError(f"learn_edge_kernel takes 2-D X and Y, got shapes {tuple(X.shape)} "
                           f"and {tuple(Y.shape)}")
    kh, kw = _pair(kernel_size, "kernel_size")
    expected = (X.shape[0] - kh + 1, X.shape[1] - kw + 1)
    if tuple(Y.shape) != expected:
        raise DivekitError(f"Y must have shape {expected} for a {kh}x{kw} kernel on X of shape "
                           f"{tuple(X.shape)}, got {tuple(Y.shape)}")
    generator = torch.Generator().manual_seed(seed)
    K = torch.randn(1, 1, kh, kw, generator=generator, dtype=X.dtype).to(X.device)
    K.requires_grad_(True)
    X, Y = X.reshape(1, 1, *X.shape), Y.reshape(1, 1, *Y.shape)
    for _ in range(steps):
        loss = ((conv2d(X, K) - Y) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, K)
        with torch.no_grad():
            K -= lr * grad
    return K.detach().reshape(kh, kw)
