"""Inspecting images at ingest and decoding them for training: one place knows the formats."""
from __future__ import annotations

import io
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

MODE_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


class Rejected(Exception):
    """An input record that cannot become a row; ``reason`` is a key of schema.REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ImageInfo(NamedTuple):
    image_format: str
    height: int
    width: int
    channels: int


def inspect_encoded(data: bytes) -> ImageInfo:
    """Fully decode an encoded image (so truncation is caught) and report its format and shape."""

    if not data:
        raise Rejected("empty_file", "the file has zero bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Rejected("not_an_image", f"not a recognised image format ({len(data)} bytes)") from None
    except Exception as e:  # a header that starts like an image and then breaks
        reason = "truncated" if "truncat" in str(e).lower() else "not_an_image"
        raise Rejected(reason, f"cannot open ({len(data)} bytes): {type(e).__name__}: {e}") from None
    try:
        im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken data
        reason = "truncated" if "truncat" in str(e).lower() else "not_an_image"
        raise Rejected(reason, f"{im.format or 'image'} decode failed: {e}") from None
    if im.mode not in MODE_CHANNELS:
        raise Rejected("unsupported_mode", f"pixel mode {im.mode!r} (accepted: {', '.join(MODE_CHANNELS)})")
    return ImageInfo(im.format.lower(), im.height, im.width, MODE_CHANNELS[im.mode])


def check_shape(height: int, width: int, channels: int,
                size: Optional[tuple[int, int]], want_channels: Optional[int]) -> None:
    if size is not None and (height, width) != tuple(size):
        raise Rejected("size_mismatch", f"{height}x{width} pixels, expected {size[0]}x{size[1]}")
    if want_channels is not None and channels != want_channels:
        raise Rejected("mode_mismatch", f"{channels} channels, expected {want_channels}")


def decode(image: bytes, image_format: str, height: int, width: int, channels: int) -> np.ndarray:
    """uint8 array of shape (height, width, channels) from a stored row."""
    if image_format == "raw":
        return np.frombuffer(image, dtype=np.uint8).reshape(height, width, channels)

    array = np.asarray(Image.open(io.BytesIO(image)))
    return array.reshape(height, width, channels)
