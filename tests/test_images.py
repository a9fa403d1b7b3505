"""Grid layout checked pixel by pixel against hand-built grids; PNG round trips through PIL."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vaesweep.core import atomic as atomic_module
from vaesweep.run.images import make_grid, reconstruction_grid, save_image_grid


def constant_images(values, channels=1, size=2):
    """[N, channels, size, size] where image i is filled with values[i]."""
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).expand(-1, channels, size, size).clone()


# Three 2×2 images a, b, c; nrow=2, padding=1, pad p: a b / c (empty), 7×7.
def expected_three_grid(a, b, c, p):
    return np.array(
        [
            [p, p, p, p, p, p, p],
            [p, a, a, p, b, b, p],
            [p, a, a, p, b, b, p],
            [p, p, p, p, p, p, p],
            [p, c, c, p, p, p, p],
            [p, c, c, p, p, p, p],
            [p, p, p, p, p, p, p],
        ],
        dtype=np.float32,
    )


def test_make_grid_exact_placement_with_empty_slot():
    grid = make_grid(constant_images([0.25, 0.5, 0.75]), nrow=2, padding=1, pad_value=0.0)
    assert grid.shape == (1, 7, 7)
    np.testing.assert_array_equal(grid[0].numpy(), expected_three_grid(0.25, 0.5, 0.75, 0.0))


def test_make_grid_row_major_distinct_pixels():
    # Non-constant images: every pixel of every image lands at its own position.
    x = torch.arange(5 * 2 * 3, dtype=torch.float32).view(5, 1, 2, 3) / 100
    grid = make_grid(x, nrow=3, padding=0, pad_value=1.0)
    assert grid.shape == (1, 4, 9)
    expected = np.ones((4, 9), dtype=np.float32)
    for i in range(5):
        r, c = divmod(i, 3)
        expected[2 * r : 2 * r + 2, 3 * c : 3 * c + 3] = x[i, 0].numpy()
    np.testing.assert_array_equal(grid[0].numpy(), expected)


def test_make_grid_rgb_keeps_channels():
    x = torch.zeros(2, 3, 1, 1)
    x[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.5])
    x[1, :, 0, 0] = torch.tensor([0.0, 1.0, 0.25])
    grid = make_grid(x, nrow=8, padding=1, pad_value=0.0)
    # nrow larger than N: one row of N columns.
    assert grid.shape == (3, 3, 5)
    np.testing.assert_array_equal(grid[:, 1, 1].numpy(), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(grid[:, 1, 3].numpy(), [0.0, 1.0, 0.25])
    assert grid[:, 0].abs().sum() == 0 and grid[:, :, 2].abs().sum() == 0


def test_make_grid_clamps_and_does_not_modify_input():
    x = constant_images([-1.0, 2.0], size=1)
    before = x.clone()
    grid = make_grid(x, nrow=2, padding=0)
    np.testing.assert_array_equal(grid[0].numpy(), [[0.0, 1.0]])
    torch.testing.assert_close(x, before)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"images": torch.rand(1, 2, 2)}, "images"),
        ({"images": torch.zeros(0, 1, 2, 2)}, "images.*N=0"),
        ({"images": torch.zeros(2, 1, 2, 2, dtype=torch.uint8)}, "floating"),
        ({"nrow": 0}, "nrow.*0"),
        ({"padding": -1}, "padding.*-1"),
        ({"pad_value": 1.5}, "pad_value.*1.5"),
    ],
)
def test_make_grid_bad_arguments(kwargs, pattern):
    args = {"images": torch.rand(2, 1, 2, 2), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        make_grid(**args)


def read_png(path):
    with Image.open(path) as im:
        return im.mode, np.array(im)


def test_save_grayscale_round_trip(tmp_path):
    # k/255 values survive uint8 conversion exactly.
    a, b, c, p = 10 / 255, 128 / 255, 255 / 255, 0 / 255
    out = save_image_grid(
        constant_images([a, b, c]), tmp_path / "g.png", nrow=2, padding=1, pad_value=p
    )
    assert out == tmp_path / "g.png"
    mode, pixels = read_png(out)
    assert mode == "L"
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected_three_grid(10, 128, 255, 0).astype(np.uint8))


def test_save_rounds_to_nearest_uint8(tmp_path):
    # x*255 = 51.0, 0.99, 1.05, 254.49: rounded to nearest, not truncated.
    x = torch.tensor([0.2, 0.0039, 0.0041, 0.998]).view(4, 1, 1, 1)
    _, pixels = read_png(save_image_grid(x, tmp_path / "r.png", nrow=4, padding=0))
    np.testing.assert_array_equal(pixels, [[51, 1, 1, 254]])


def test_save_rgb_round_trip(tmp_path):
    x = torch.zeros(2, 3, 1, 2)
    x[0] = torch.tensor([1.0, 0.0, 64 / 255]).view(3, 1, 1)
    x[1, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    x[1, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0])
    mode, pixels = read_png(save_image_grid(x, tmp_path / "rgb.png", nrow=1, padding=1))
    assert mode == "RGB"
    assert pixels.shape == (5, 4, 3)
    white = [255, 255, 255]
    expected = np.array(
        [
            [white, white, white, white],
            [white, [255, 0, 64], [255, 0, 64], white],
            [white, white, white, white],
            [white, [0, 255, 0], [0, 0, 255], white],
            [white, white, white, white],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(pixels, expected)


def test_save_upscale_is_nearest_neighbour(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 8, 8)).float() / 255
    _, small = read_png(save_image_grid(x, tmp_path / "s.png", nrow=2, padding=1))
    _, big = read_png(save_image_grid(x, tmp_path / "b.png", nrow=2, padding=1, upscale=4))
    assert small.shape == (19, 19)
    assert big.shape == (76, 76)
    np.testing.assert_array_equal(big, np.kron(small, np.ones((4, 4), dtype=np.uint8)))


def test_save_leaves_no_temp_files_and_creates_parent(tmp_path):
    target = tmp_path / "samples" / "epoch_3.png"
    save_image_grid(torch.rand(4, 1, 8, 8), target)
    save_image_grid(torch.rand(4, 1, 8, 8), target)  # overwrite in place
    assert os.listdir(target.parent) == ["epoch_3.png"]


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    target.write_bytes(b"old")
    seen = {}
    real_replace = os.replace

    def spy_replace(src, dst):
        # At the moment of the move the old file is untouched and the new one is complete.
        seen["dst_before"] = target.read_bytes()
        seen["src_dir"] = os.path.dirname(os.path.abspath(src))
        with Image.open(src) as im:
            im.load()
            seen["src_size"] = im.size
        real_replace(src, dst)

    monkeypatch.setattr(atomic_module.os, "replace", spy_replace)
    save_image_grid(torch.rand(2, 1, 4, 4), target, nrow=2, padding=0)
    assert seen["dst_before"] == b"old"
    assert seen["src_dir"] == str(tmp_path)
    assert seen["src_size"] == (8, 4)
    assert read_png(target)[1].shape == (4, 8)


def test_failed_save_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    target.write_bytes(b"old")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(torch.rand(2, 1, 4, 4), target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["grid.png"]


@pytest.mark.parametrize(
    ("images", "kwargs", "pattern"),
    [
        (torch.rand(2, 2, 4, 4), {}, "1 \\(grayscale\\) or 3 \\(RGB\\).*C=2"),
        (torch.rand(2, 1, 4, 4), {"upscale": 0}, "upscale.*0"),
    ],
)
def test_save_bad_arguments(tmp_path, images, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        save_image_grid(images, tmp_path / "x.png", **kwargs)
    assert os.listdir(tmp_path) == []


def test_reconstruction_grid_layout():
    x = torch.rand(10, 1, 3, 3)
    x_rec = torch.rand(10, 1, 3, 3, requires_grad=True)
    pairs = reconstruction_grid(x, x_rec, n=4)
    assert pairs.shape == (8, 1, 3, 3)
    assert not pairs.requires_grad
    grid = make_grid(pairs, nrow=4, padding=1)
    for i in range(4):
        left = 1 + 4 * i
        # Original in the first row, its reconstruction right below it.
        torch.testing.assert_close(grid[:, 1:4, left : left + 3], x[i])
        torch.testing.assert_close(grid[:, 5:8, left : left + 3], x_rec[i].detach())


def test_reconstruction_grid_errors():
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_grid(torch.rand(4, 1, 3, 3), torch.rand(4, 1, 3, 2))
    with pytest.raises(ValueError, match=r"n=8 .*4 examples"):
        reconstruction_grid(torch.rand(4, 1, 3, 3), torch.rand(4, 1, 3, 3), n=8)
    with pytest.raises(ValueError, match="n must be"):
        reconstruction_grid(torch.rand(4, 1, 3, 3), torch.rand(4, 1, 3, 3), n=0)
