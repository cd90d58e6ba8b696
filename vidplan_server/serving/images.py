"""Camera frames off the wire: decode JPEG / PNG / raw RGB with OpenCV and resize to the model's view size.

Frames are resized once, on arrival, so that sessions store small model-sized frames and the planner
never sees the wire resolution. ``INTER_AREA`` is OpenCV's recommended filter for shrinking.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image as PILImage

from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.messages import ENCODINGS, Image

#: Largest accepted image by default, (shorter side, longer side) in pixels: 720p (``ServiceConfig.max_image_size``).
MAX_IMAGE_SIZE = (720, 1280)


def decode_image(
    image: Image, size_hw: tuple[int, int], field: str, max_size: tuple[int, int] = MAX_IMAGE_SIZE
) -> np.ndarray:
    """Decode one wire image to RGB ``uint8`` of shape ``(*size_hw, 3)``.

    ``field`` is the request path used in error messages, e.g. ``observation.frames[wrist_image_left]``.
    Raises :class:`InvalidArgument` for an unknown encoding, empty or corrupt data, an image larger than
    ``max_size`` (checked from the header, before any pixel is decoded), a channel count other than 3, or a
    size that disagrees with the declared ``height`` / ``width``.
    """
    check_image(image, field, max_size)
    rgb = _decode_raw(image) if image.encoding == "raw" else _decode_encoded(image, field)
    if rgb.shape[:2] != tuple(size_hw):
        rgb = cv2.resize(rgb, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def check_image(image: Image, field: str, max_size: tuple[int, int] = MAX_IMAGE_SIZE) -> tuple[int, int]:
    """Everything about an image that its header tells, without decoding a pixel; returns (height, width).

    Encoding, non-empty data, the declared size and the size in the JPEG / PNG header (read by Pillow, which
    stops at the header) within ``max_size`` and equal to each other, raw data of the right length.
    """
    if image.encoding not in ENCODINGS:
        raise InvalidArgument(
            f"unknown encoding {image.encoding!r} (expected one of {', '.join(ENCODINGS)})", field=f"{field}.encoding"
        )
    if not image.data:
        raise InvalidArgument("empty image data", field=f"{field}.data")
    long_side = max_size[1]
    for name, value in (("height", image.height), ("width", image.width)):
        if value < 0 or value > long_side:
            raise InvalidArgument(f"{value} is outside [0, {long_side}]", field=f"{field}.{name}")
    if image.encoding == "raw":
        if image.channels != 3:
            raise InvalidArgument(f"{image.channels} channels, expected 3 (RGB)", field=f"{field}.channels")
        if image.height < 1 or image.width < 1:
            raise InvalidArgument("raw images need height and width", field=f"{field}.height")
        _check_fits(image.height, image.width, max_size, f"{field}.height")
        expected = image.height * image.width * 3
        if len(image.data) != expected:
            raise InvalidArgument(
                f"{len(image.data)} bytes, expected {expected} for {image.height}x{image.width} RGB",
                field=f"{field}.data",
            )
        return image.height, image.width
    height, width = _header_size(image, field, max_size)
    if (image.height and image.height != height) or (image.width and image.width != width):
        raise InvalidArgument(
            f"the image is {height}x{width}, the declared size {image.height}x{image.width}", field=f"{field}.height"
        )
    return height, width


def _check_fits(height: int, width: int, max_size: tuple[int, int], field: str) -> None:
    short, long = sorted((height, width))
    if short > max_size[0] or long > max_size[1]:
        raise InvalidArgument(
            f"{height}x{width} pixels, larger than the server's limit of {max_size[1]}x{max_size[0]} (either "
            "orientation)",
            field=field,
        )


def _decode_raw(image: Image) -> np.ndarray:
    return np.frombuffer(image.data, dtype=np.uint8).reshape(image.height, image.width, 3)


def _header_size(image: Image, field: str, max_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) from the JPEG / PNG header alone (Pillow reads it lazily, nothing is decoded), so a small
    file that declares a huge image is refused before OpenCV allocates its pixels."""
    try:
        with PILImage.open(io.BytesIO(image.data)) as header:
            width, height = header.size
    except PILImage.DecompressionBombError:  # Pillow's own guard (> ~179 M pixels) fired first
        raise InvalidArgument(
            f"the header declares a bomb-sized image, larger than the server's limit of {max_size[1]}x{max_size[0]}",
            field=f"{field}.data",
        ) from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError):
        raise InvalidArgument(f"not a decodable {image.encoding.upper()} image", field=f"{field}.data") from None
    _check_fits(height, width, max_size, f"{field}.data")
    return height, width


def _decode_encoded(image: Image, field: str) -> np.ndarray:
    buf = np.frombuffer(image.data, dtype=np.uint8)
    # IMREAD_UNCHANGED keeps the channel count so that grey or RGBA images are reported, not silently converted.
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise InvalidArgument(f"not a decodable {image.encoding.upper()} image", field=f"{field}.data")
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels != 3:
        raise InvalidArgument(f"{channels} channel(s), expected 3 (RGB)", field=f"{field}.data")
    if decoded.dtype != np.uint8:
        raise InvalidArgument(f"{decoded.dtype} pixels, expected 8-bit", field=f"{field}.data")
    h, w = decoded.shape[:2]
    if (image.height and image.height != h) or (image.width and image.width != w):
        raise InvalidArgument(
            f"the image is {h}x{w}, the declared size {image.height}x{image.width}", field=f"{field}.height"
        )
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, encoding: str = "jpeg", quality: int = 90) -> Image:
    """Encode an RGB ``uint8`` ``(H, W, 3)`` array as a wire :class:`Image` (tests, benchmarks)."""
    h, w = rgb.shape[:2]
    if encoding == "raw":
        return Image(data=np.ascontiguousarray(rgb, dtype=np.uint8).tobytes(), encoding="raw", height=h, width=w)
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if encoding == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {h}x{w} image as {encoding}")
    return Image(data=buf.tobytes(), encoding=encoding, height=h, width=w)


def encode_rollout(stack: np.ndarray | None, cameras: Sequence[str]) -> list[tuple[int, str, Image]]:
    """Predicted frames or heatmaps ``(H, V, h, w, 3)`` uint8 as ``(frame, camera, PNG image)``, frame-major."""
    if stack is None:
        return []
    return [
        (t, camera, encode_image(rgb, "png"))
        for t, views in enumerate(stack)
        for camera, rgb in zip(cameras, views, strict=True)
    ]
