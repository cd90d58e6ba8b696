"""Decoding wire images: JPEG, PNG and raw RGB, resized to the model's view size."""

from __future__ import annotations

import numpy as np
import pytest

from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.images import decode_image, encode_image
from vidplan_server.serving.messages import Image


def _pattern(h=180, w=320):
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, :, 0] = 200  # red top half
    rgb[h // 2 :, :, 2] = 200  # blue bottom half
    return rgb


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw"])
def test_decode_keeps_rgb_order_and_resizes(encoding):
    out = decode_image(encode_image(_pattern(), encoding), (64, 64), "f")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    top, bottom = out[:24].reshape(-1, 3).mean(0), out[40:].reshape(-1, 3).mean(0)
    assert top[0] > 180 and top[2] < 20 and bottom[2] > 180 and bottom[0] < 20


def test_model_sized_input_is_not_resampled():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(rgb, "png"), (64, 64), "f"), rgb)


def test_truncated_jpeg_header_is_refused():
    data = encode_image(_pattern(), "jpeg").data[:20]
    with pytest.raises(InvalidArgument, match=r"^cam.data: not a decodable JPEG"):
        decode_image(Image(data=data, encoding="jpeg"), (64, 64), "cam")


def test_absurd_declared_size_is_refused():
    with pytest.raises(InvalidArgument, match=r"^cam.height: 100000 is outside \[0, 1280\]"):
        decode_image(Image(data=b"x", encoding="raw", height=100000, width=1), (64, 64), "cam")


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw"])
def test_images_up_to_720p_either_way_are_accepted_and_larger_ones_refused(encoding):
    for h, w in ((720, 1280), (1280, 720)):
        assert decode_image(encode_image(np.zeros((h, w, 3), np.uint8), encoding), (64, 64), "f").shape == (64, 64, 3)
    for h, w in ((721, 1280), (720, 1281), (1281, 16)):
        with pytest.raises(InvalidArgument, match="larger than the server's limit of 1280x720|outside"):
            decode_image(encode_image(np.zeros((h, w, 3), np.uint8), encoding), (64, 64), "f")
    # a smaller configured limit
    with pytest.raises(InvalidArgument, match="limit of 320x180"):
        decode_image(encode_image(np.zeros((181, 320, 3), np.uint8), encoding), (64, 64), "f", max_size=(180, 320))


def test_a_huge_declared_image_is_refused_before_decoding():
    """A 60-byte PNG whose header claims 30000 x 30000 pixels (2.7 GB decoded) never reaches the decoder."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png(h: int, w: int) -> bytes:
        header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")

    for h, w in ((5000, 64), (30000, 30000)):  # over our size limit; over Pillow's own bomb guard too
        with pytest.raises(InvalidArgument, match="limit of 1280x720") as info:
            decode_image(Image(data=png(h, w), encoding="png"), (64, 64), "observation.frames[0]")
        assert info.value.field == "observation.frames[0].data"
