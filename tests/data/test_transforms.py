"""The image pipelines of the paper's recipes, applied to images whose pixels say where they came from."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdd_lightning.data.transforms import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar_eval_transform,
    cifar_train_transform,
    cub_eval_transform,
    cub_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
    to_normalized_float,
)


def _position_image(height: int, width: int) -> torch.Tensor:
    """``uint8 (3, h, w)``: red = row + 1, green = column + 1 (both < 256), blue = 200."""
    image = torch.empty(3, height, width, dtype=torch.uint8)
    image[0] = (torch.arange(height) + 1)[:, None]
    image[1] = (torch.arange(width) + 1)[None, :]
    image[2] = 200
    return image


def _pixels(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """A normalised float image back to its 0-255 values."""
    return (x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255


def _is_crop_or_mirror(out: torch.Tensor, source: torch.Tensor) -> bool:
    """Whether ``out`` (pixel values) is a window of the position image ``source``, mirrored or not.

    The window's centre pixel says where it is in ``source`` (red = row + 1, green = column + 1)."""
    size, centre = out.shape[-1], out.shape[-1] // 2
    for candidate in (out, out.flip(-1)):
        row = (source[0].amax(1) == candidate[0, centre, centre].round()).nonzero()
        column = (source[1].amax(0) == candidate[1, centre, centre].round()).nonzero()
        if len(row) != 1 or len(column) != 1:
            continue
        dy, dx = int(row[0]) - centre, int(column[0]) - centre
        window = source[:, max(dy, 0) : dy + size, max(dx, 0) : dx + size]
        if min(dy, dx) >= 0 and window.shape == out.shape and torch.allclose(candidate, window, atol=0.5):
            return True
    return False


def test_the_common_tail_scales_to_0_1_then_normalises_per_channel():
    image = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2).contiguous()
    out = to_normalized_float((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))(image)
    assert out.dtype == torch.float32 and out.shape == (3, 2, 2)
    expected = torch.tensor([(0.0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (1.0 - 0.3) / 2.0]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, expected)


PIPELINES = {
    "cifar_train": lambda: cifar_train_transform(),
    "cifar_eval": lambda: cifar_eval_transform(),
    "imagenet_train": lambda: imagenet_train_transform(crop_size=24),
    "imagenet_eval": lambda: imagenet_eval_transform(crop_size=24, resize_size=32),
    "cub_train": lambda: cub_train_transform(crop_size=24, resize_size=32),
    "cub_eval": lambda: cub_eval_transform(crop_size=24, resize_size=32),
}


@pytest.mark.parametrize("name", PIPELINES)
def test_a_pil_image_and_its_uint8_tensor_give_the_same_result(name):
    # PIL always resizes with antialiasing; the tensor path must too (or shrinking a photo aliases its detail)
    image = torch.randint(0, 256, (3, 32, 32) if name.startswith("cifar") else (3, 150, 210), dtype=torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    transform = PIPELINES[name]()
    for seed in range(3):
        torch.manual_seed(seed)
        from_tensor = transform(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(from_tensor, transform(pil), atol=0.03, rtol=0)  # within one grey level
        assert from_tensor.dtype == torch.float32


def test_cifar_evaluation_is_the_official_normalisation_only():
    image = _position_image(32, 32)
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    torch.testing.assert_close(cifar_eval_transform()(image), (image.float() / 255 - mean) / std)


def test_cifar_training_defaults_crop_32_from_the_image_padded_by_4():
    image = _position_image(32, 32)
    padded = torch.nn.functional.pad(image.float(), (4, 4, 4, 4))
    transform = cifar_train_transform()
    torch.manual_seed(0)
    borders = set()
    for _ in range(60):
        out = _pixels(transform(image), CIFAR100_MEAN, CIFAR100_STD)
        assert out.shape == (3, 32, 32) and _is_crop_or_mirror(out, padded)
        borders.add(int((out[0, :, 16] < 0.5).sum()))  # zero rows of the padding in this crop
    assert max(borders) == 4 and 0 in borders


def test_default_sizes_are_the_papers_224_from_256():
    image = _position_image(256, 300)  # ImageNet: the shorter side is 256 already, so the resize keeps the image
    torch.testing.assert_close(
        _pixels(imagenet_eval_transform()(image)), image[:, 16:240, 38:262].float(), atol=0.01, rtol=0
    )
    square = _position_image(256, 256)  # CUB: already the 256 x 256 square
    torch.testing.assert_close(
        _pixels(cub_eval_transform()(square)), square[:, 16:240, 16:240].float(), atol=0.01, rtol=0
    )
    torch.manual_seed(0)
    crop = _pixels(cub_train_transform()(square))
    assert crop.shape == (3, 224, 224) and _is_crop_or_mirror(crop, square.float())
    assert imagenet_train_transform()(image).shape == (3, 224, 224)


def test_imagenet_evaluation_resizes_the_shorter_side_keeping_the_aspect_ratio():
    # 64 x 128 -> 32 x 64 -> the centre 32 x 32: every row, and the middle half of the columns (33..96)
    out = _pixels(imagenet_eval_transform(crop_size=32, resize_size=32)(_position_image(64, 128)))
    assert out.shape == (3, 32, 32)
    assert abs(out[0, 0, 0] - 1.5) < 1 and abs(out[0, -1, 0] - 63.5) < 1
    assert abs(out[1, 0, 0] - 33.5) < 1 and abs(out[1, 0, -1] - 95.5) < 1


def test_cub_resizes_to_a_square_without_keeping_the_aspect_ratio():
    # 64 x 128 -> 32 x 32 (rows and columns both averaged in pairs... of different sizes) -> the centre 16 x 16
    out = _pixels(cub_eval_transform(crop_size=16, resize_size=32)(_position_image(64, 128)))
    assert out.shape == (3, 16, 16)
    assert abs(out[0, 0, 0] - 17.5) < 1 and abs(out[0, -1, 0] - 47.5) < 1  # rows 16..47 of 64
    assert abs(out[1, 0, 0] - 34.5) < 1.5 and abs(out[1, 0, -1] - 94.5) < 1.5  # columns 32..95 of 128


def test_imagenet_training_crops_random_areas_and_flips():
    image = _position_image(64, 64)
    transform = imagenet_train_transform(crop_size=24)
    torch.manual_seed(0)
    outs = [_pixels(transform(image)) for _ in range(60)]
    assert all(out.shape == (3, 24, 24) for out in outs)
    heights = [float(out[0, -1, 12] - out[0, 0, 12]) for out in outs]  # rows of the source the crop spans
    mirrored = {bool(out[1, 12, 0] > out[1, 12, -1]) for out in outs}
    assert min(heights) < 25 < 45 < max(heights) and mirrored == {False, True}  # scale 0.08-1 of the area
