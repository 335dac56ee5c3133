"""Learnable upsampling initialised as bilinear interpolation (d2l 14.10-14.11; Long, Shelhamer
& Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation").

FCN turns its coarse class scores back into a full-size map with a transposed convolution whose
kernel starts as bilinear interpolation and is then trained. Bilinear interpolation by an
integer factor ``f`` is a transposed convolution with stride ``f``: every input pixel paints a
tent (``1 - |d| / f`` at distance ``d``) onto the output, and neighbouring tents overlap so that
their weights sum to one.
"""

from __future__ import annotations

import torch
from torch import nn

from divekit.errors import DivekitError


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The course's bilinear interpolation kernel for ``nn.ConvTranspose2d``.

    The 1-D profile is ``1 - |t - center| / factor`` with ``factor = (kernel_size + 1) // 2``
    and the center at ``factor - 1`` (odd size) or ``factor - 0.5`` (even size); the 2-D kernel
    is the outer product of two profiles. Channel ``i`` maps to channel ``i`` only, so each
    channel is interpolated on its own; output channels past ``in_channels`` get zero kernels.

    Args:
        in_channels: channels the layer reads.
        out_channels: channels the layer writes.
        kernel_size: side of the square kernel; ``4`` gives the profile
            ``[0.25, 0.75, 0.75, 0.25]``.

    Returns:
        The weight, shape (in_channels, out_channels, kernel_size, kernel_size) (the layout of
        ``nn.ConvTranspose2d``), in the default dtype.
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_size", kernel_size)):
        if value < 1:
            raise DivekitError(f"bilinear_kernel: {name} must be at least 1, got {value}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    # Computed in float64 so the tents are exact before one rounding to the default dtype.
    profile = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size,
                         dtype=torch.float64)
    channels = torch.arange(min(in_channels, out_channels))
    weight[channels, channels] = torch.outer(profile, profile)
    return weight.to(torch.get_default_dtype())


def bilinear_upsampling(channels: int, factor: int, bias: bool = True) -> nn.ConvTranspose2d:
    """A transposed convolution that enlarges by ``factor``, initialised as bilinear upsampling.

    Every factor ``>= 1`` is supported and gives exactly ``factor`` times the input size. An even
    factor uses the course's kernel ``2 * factor`` with padding ``factor // 2`` (FCN's 32x head
    is ``bilinear_upsampling(num_classes, 32)``: kernel 64, stride 32, padding 16). An odd
    factor uses kernel ``2 * factor - 1``: with ``2 * factor`` the output would be one pixel too
    large, because the tent of an odd factor is centred on a pixel, not between two.

    Away from the border (``factor`` pixels each side) the output equals
    ``F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)``; at the
    border the layer sees zeros outside the image where interpolation repeats the edge pixel.

    Args:
        channels: input and output channels (each is upsampled on its own).
        factor: the integer scale factor, at least 1.
        bias: whether the layer has a (trainable) bias, as the course's does; it starts at zero
            so that the layer starts as exact interpolation.

    Returns:
        ``nn.ConvTranspose2d(channels, channels, kernel, stride=factor, padding=factor // 2)``
        with the bilinear weight; the weight stays trainable.

    Shape:
        (N, channels, H, W) -> (N, channels, factor * H, factor * W).
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise DivekitError(f"bilinear_upsampling: factor must be an integer >= 1, got "
                           f"{factor!r}")
    if channels < 1:
        raise DivekitError(f"bilinear_upsampling: channels must be at least 1, got {channels}")
    kernel_size = 2 * factor - factor % 2
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=factor,
                               padding=factor // 2, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, kernel_size))
        if layer.bias is not None:
            layer.bias.zero_()
    return layer
