"""plot_heatmap writes a real PNG of a sensible size and refuses what is not a matrix."""

import struct

import pytest
import torch

from divekit.engine.plots import plot_heatmap
from divekit.errors import DivekitError


def png_size(path):
    """Width and height from the PNG signature and IHDR chunk (the first one, by the spec)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_heatmap_of_attention_weights_with_token_labels(tmp_path):
    weights = torch.softmax(torch.randn(4, 6, requires_grad=True), dim=-1)  # grad: detached
    path = plot_heatmap(weights, tmp_path / "attention.png",
                        xlabels=["<bos>", "the", "cat", "sat", "down", "<eos>"],
                        ylabels=["le", "chat", "assis", "<eos>"], xlabel="keys",
                        ylabel="queries", title="weights")
    assert path == tmp_path / "attention.png"
    width, height = png_size(path)
    # A small matrix: a figure of a few inches at 100 dpi, wider than tall (colorbar).
    assert 300 <= width <= 1000 and 250 <= height <= 800 and width > height
    assert path.stat().st_size > 5_000  # drawn, not blank
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was moved into place


def test_heatmap_grows_with_the_matrix_within_bounds(tmp_path):
    small = png_size(plot_heatmap([[0.5, 0.5], [1.0, 0.0]], tmp_path / "small.png"))
    large = png_size(plot_heatmap(torch.rand(50, 50), tmp_path / "large.png"))
    assert large[0] > small[0] and large[1] > small[1]
    assert max(large) <= 1000


@pytest.mark.parametrize("matrix", [torch.rand(2, 3, 4), torch.rand(5), [], [[]]])
def test_heatmap_rejects_what_is_not_a_2d_matrix(tmp_path, matrix):
    with pytest.raises(DivekitError, match="2-D matrix"):
        plot_heatmap(matrix, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_heatmap_rejects_labels_that_do_not_fit(tmp_path):
    with pytest.raises(DivekitError, match="xlabels has 2 labels for 3 columns"):
        plot_heatmap(torch.rand(2, 3), tmp_path / "bad.png", xlabels=["a", "b"])
