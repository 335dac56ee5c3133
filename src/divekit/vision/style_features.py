"""Feature extractors for neural style transfer (d2l 14.12; Gatys, Ecker & Bethge, 2016).

Both extractors share one interface: ``extractor(images) -> (content_features,
style_features)``, two lists of feature maps ``(N, C, h, w)``, for images normalised with the
ImageNet statistics (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), and a ``loss_weights``
attribute ``(content, style, tv)`` that balances its features' scales.

- :class:`VGG19Features`: the book's extractor, a pretrained VGG-19's ``features`` read from a
  weights file with torchvision's key names (``features.0.weight``, ...).
- :class:`RandomFeatures`: the fallback when no weights file exists, a seeded multi-scale
  network with random weights. Gram matrices of random ReLU features still describe colour and
  texture (Ustyuzhaninov, Brendel, Gatys & Bethge, 2017, "What does it take to generate natural
  textures?"), so the transfer stays visible; the content is kept less faithfully than with
  trained filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.models.vgg import VGG19, vgg_block

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The book's choice of torchvision ``features`` indices: outputs taken after these modules.
VGG19_STYLE_LAYERS = (0, 5, 10, 19, 28)  # conv1_1, conv2_1, conv3_1, conv4_1, conv5_1
VGG19_CONTENT_LAYERS = (25,)  # conv4_4
BOOK_WEIGHTS = (1.0, 1e4, 10.0)  # content, style, total variation


class LayerTaps(nn.Module):
    """A sequential network whose outputs after chosen modules are the features.

    Args:
        layers: the network; it is run only as far as the deepest chosen module.
        content_layers: indices into ``layers`` whose outputs are content features.
        style_layers: indices into ``layers`` whose outputs are style features.

    Shape:
        ``(N, 3, H, W) -> ([(N, C_i, h_i, w_i)], [(N, C_j, h_j, w_j)])``.
    """

    def __init__(self, layers: nn.Sequential, content_layers: Sequence[int],
                 style_layers: Sequence[int]) -> None:
        super().__init__()
        deepest = max(*content_layers, *style_layers)
        if deepest >= len(layers):
            raise DivekitError(f"layer {deepest} asked for, but the network has only "
                               f"{len(layers)} layers")
        self.layers = layers[: deepest + 1]
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        # A fixed measuring instrument: only the image is trained.
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        content, style = [], []
        x = images
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.content_layers:
                content.append(x)
            if index in self.style_layers:
                style.append(x)
        return content, style


class VGG19Features(LayerTaps):
    """The book's extractor: VGG-19's convolutional part, cut after ``features.28``.

    The layers are divekit's VGG blocks (:func:`divekit.models.vgg.vgg_block`) laid end to
    end, which numbers them exactly as torchvision's ``vgg19().features`` (``0`` conv1_1,
    ``4`` the first max-pool, ..., ``28`` conv5_1), so torchvision's ImageNet weights load
    key for key. Build it with :meth:`from_file`; a fresh instance has PyTorch's default
    random weights. :attr:`loss_weights` are the book's: content 1, style 1e4, TV 10.

    Args:
        content_layers, style_layers: ``features`` indices; the book's by default.
    """

    loss_weights = BOOK_WEIGHTS

    def __init__(self, content_layers: Sequence[int] = VGG19_CONTENT_LAYERS,
                 style_layers: Sequence[int] = VGG19_STYLE_LAYERS) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for num_convs, out_channels in VGG19:
            layers.extend(vgg_block(num_convs, channels, out_channels))
            channels = out_channels
        super().__init__(nn.Sequential(*layers), content_layers, style_layers)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Four 2x2 max-pools come before conv5_1; torch's own error would name no cause.
        if min(images.shape[-2:]) < 16:
            raise DivekitError(f"VGG-19 features need images of at least 16x16 pixels, got "
                               f"{images.shape[-2]}x{images.shape[-1]}; use a larger --size")
        return super().forward(images)

    @classmethod
    def from_file(cls, path: str | Path, **layers: Sequence[int]) -> VGG19Features:
        """Load the ``features.N.*`` tensors of a torchvision VGG-19 state dict.

        The file is read with ``torch.load(weights_only=True)`` (no code is unpickled); keys
        outside the used part (``classifier.*``, ``features.30`` and deeper) are ignored.

        Args:
            path: e.g. torchvision's ``vgg19-dcbb9e9d.pth``.
            **layers: ``content_layers`` / ``style_layers`` for the constructor.

        Raises:
            DivekitError: the file is missing, unreadable, not a state dict, or lacks a needed
                tensor or has one of another shape (the message names the file and the key).
        """
        path = Path(path)
        model = cls(**layers)
        state = _read_tensors(path)
        wanted = {f"features.{key}": value for key, value in model.layers.state_dict().items()}
        missing = [key for key in wanted if key not in state]
        if missing:
            raise DivekitError(
                f"{path}: {len(missing)} VGG-19 tensors are missing, e.g. {missing[0]}; give a "
                "torchvision VGG-19 state dict (keys features.0.weight ... features.34.bias)")
        for key, value in wanted.items():
            if state[key].shape != value.shape:
                raise DivekitError(
                    f"{path}: {key} has shape {tuple(state[key].shape)}, VGG-19 needs "
                    f"{tuple(value.shape)}; is this a VGG-19 (not VGG-16 or another net)?")
        model.layers.load_state_dict(
            {key.removeprefix("features."): state[key].float() for key in wanted})
        return model


class RandomFeatures(LayerTaps):
    """The fallback extractor: a seeded, randomly initialised, four-scale conv network.

    Layers (index: module; convs are 3 x 3 with replicate padding, pools 2 x 2 max-pools that
    keep a last odd row or column)::

        0 conv 3->16     1 ReLU   2 max-pool    (full resolution)
        3 conv 16->64    4 ReLU   5 max-pool    (1/2)
        6 conv 64->128   7 ReLU   8 max-pool    (1/4)
        9 conv 128->256  10 ReLU                (1/8)

    Style features are the ReLU outputs ``1, 4, 7, 10``, the first conv of each scale as in the
    book's VGG-19 choice, so colour (full resolution) and ever larger strokes (receptive fields
    of 3, 8, 18 and 38 pixels) are matched. The content feature is ReLU ``4``, a
    half-resolution map: the photograph's layout is kept while finer texture may change.
    Weights are He-normal (std ``sqrt(2 / fan_in)``), biases zero, drawn from
    ``torch.Generator().manual_seed(seed)``: one seed, one network, on every machine.
    Replicate padding and ``ceil_mode`` pooling give border pixels the same pull as inner
    ones (zero padding and dropped odd columns left coloured strips at the edges), and any
    image of at least 2 x 2 pixels passes (reflection padding would need 9 x 9).

    Random features are weaker at holding content than trained ones, so this extractor asks
    for ten times the book's content weight: :attr:`loss_weights` ``= (10, 1e4, 10)``,
    chosen by eye on the book's rainier / autumn-oak pair.

    Args:
        seed: seeds the weights.
    """

    loss_weights = (10.0, 1e4, 10.0)

    def __init__(self, seed: int = 0) -> None:
        layers: list[nn.Module] = []
        channels = 3
        widths = (16, 64, 128, 256)
        for scale, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1, padding_mode="replicate"),
                       nn.ReLU()]
            if scale < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = width
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in layers:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                    module.bias.zero_()
        super().__init__(nn.Sequential(*layers), content_layers=(4,), style_layers=(1, 4, 7, 10))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from ``path``, or one clear error."""
    if not path.is_file():
        raise DivekitError(f"no weights file at {path}; give the path of a VGG-19 state dict "
                           "or leave --weights out to use the random-feature fallback")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        raise DivekitError(f"{path} could not be read as weights ({type(e).__name__}: "
                           f"{str(e)[:200]}); the file is damaged or not a weights file") from e
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DivekitError(f"{path} holds a {type(state).__name__}, not a state dict of named "
                           "tensors; save one with torch.save(model.state_dict(), path)")
    return state
