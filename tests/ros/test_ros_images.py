"""Image messages decode to what their bytes mean, malformed ones are refused with the reason,
and detections survive the trip into `vision_msgs/Detection2DArray` and back.

Oracles: pixel arrays built with numpy per encoding (channel order, padding, byte order written
out by hand), PIL's own files for compressed images, box centres and sizes worked out by hand.
"""

from __future__ import annotations

import array
import io
import struct
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from domainvlm.detection import Detections
from domainvlm.ros import messages as m
from domainvlm.ros.conversions import detection_array, detections_from_array, header_at, stamp_ns
from domainvlm.ros.images import (
    MAX_PIXELS,
    MalformedImage,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
)
from domainvlm.ros.typestore import ros_typestore

HEADER = m.Header(stamp=m.Time(sec=12, nanosec=345), frame_id="cam")


def raw_case(encoding: str, height: int, width: int, pad: int, bigendian: int, seed: int):
    """(row bytes as the encoding lays them out, the RGB array they mean)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
    gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
    wide = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
    order = ">u2" if bigendian else "<u2"
    pixels, expected = {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[..., ::-1], rgb),
        "8UC3": (rgb[..., ::-1], rgb),
        "rgba8": (np.concatenate([rgb, alpha], -1), rgb),
        "bgra8": (np.concatenate([rgb[..., ::-1], alpha], -1), rgb),
        "mono8": (gray, np.stack([gray] * 3, -1)),
        "8UC1": (gray, np.stack([gray] * 3, -1)),
        "mono16": (wide[..., 0].astype(order), np.stack([wide[..., 0] // 256] * 3, -1)),
        "16UC1": (wide[..., 0].astype(order), np.stack([wide[..., 0] // 256] * 3, -1)),
        "rgb16": (wide.astype(order), wide // 256),
    }[encoding]
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(height, -1)
    padding = rng.integers(0, 256, (height, pad), dtype=np.uint8)
    return np.concatenate([rows, padding], 1), expected.astype(np.uint8)


CASES = [("rgb8", 0, 0), ("rgb8", 3, 0), ("bgr8", 1, 0), ("8UC3", 0, 0), ("rgba8", 4, 0),
         ("bgra8", 0, 0), ("mono8", 5, 0), ("8UC1", 0, 0), ("mono16", 0, 0), ("mono16", 2, 1),
         ("16UC1", 0, 1), ("rgb16", 0, 0), ("rgb16", 6, 1)]


@pytest.mark.parametrize(("encoding", "pad", "bigendian"), CASES)
def test_raw_images_decode_to_their_pixels_from_every_carrier(encoding, pad, bigendian) -> None:
    height, width = 5, 7  # odd on purpose
    rows, expected = raw_case(encoding, height, width, pad, bigendian, seed=len(encoding) + pad)
    ours = m.Image(header=HEADER, height=height, width=width, encoding=encoding,
                   is_bigendian=bigendian, step=rows.shape[1], data=rows.tobytes())
    ts = ros_typestore()
    theirs = ts.deserialize_cdr(ours.serialize(), "sensor_msgs/msg/Image")  # data: numpy
    rclpy_like = SimpleNamespace(**{k: getattr(ours, k) for k in
                                    ("height", "width", "encoding", "is_bigendian", "step")},
                                 data=array.array("B", rows.tobytes()))
    assert isinstance(theirs.data, np.ndarray)
    for msg in (ours, theirs, rclpy_like):
        image = decode_image(msg)
        assert image.mode == "RGB" and image.size == (width, height)
        np.testing.assert_array_equal(np.asarray(image), expected)


def bad(**fields) -> SimpleNamespace:
    base = {"height": 480, "width": 640, "encoding": "rgb8", "is_bigendian": 0, "step": 1920}
    base.update(fields)
    if "data" not in base:
        base["data"] = bytes(base["step"] * base["height"])
    return SimpleNamespace(**base)


@pytest.mark.parametrize(("msg", "reason"), [
    (bad(encoding="yuv422"), "image 640x480 'yuv422': unknown encoding; supported: rgb8"),
    (bad(encoding=""), "image 640x480 '': unknown encoding"),
    (bad(data=bytes(1000)), "image 640x480 'rgb8': data is 1000 bytes, step*height is 921600"),
    (bad(data=bytes(921599)), "data is 921599 bytes, step*height is 921600"),
    (bad(data=bytes(921601)), "data is 921601 bytes, step*height is 921600"),
    (bad(step=1919, data=bytes(1919 * 480)), "step 1919 is less than width*3 = 1920"),
    (bad(encoding="mono16", step=1279, data=bytes(1279 * 480)), "less than width*2 = 1280"),
    (bad(height=0, data=b""), "image 640x0 'rgb8': zero size"),
    (bad(width=0, step=0, data=b""), "image 0x480 'rgb8': zero size"),
    (bad(width=100_000, height=100_000, step=300_000, data=b"x"),
     f"image 100000x100000 'rgb8': 10000000000 pixels, more than the {MAX_PIXELS} accepted"),
    (bad(width=2**32 - 1, height=2**32 - 1, step=3, data=b""), "more than the"),
    (bad(data=[0] * 921600), "data of type list is not a contiguous byte buffer"),
])
def test_malformed_raw_images_are_refused_with_the_reason(msg, reason) -> None:
    with pytest.raises(MalformedImage) as refused:
        decode_image(msg)
    assert reason in str(refused.value)


def test_absurd_dimensions_cost_nothing() -> None:
    start = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(MalformedImage):
            decode_image(bad(width=65535, height=65535, step=65535 * 3, data=b""))
    assert time.perf_counter() - start < 1.0


def scene(width: int = 33, height: int = 21) -> Image.Image:
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (3, 3, 3)), np.ones((11, 11, 1)))[:height, :width]
    return Image.fromarray(smooth.astype(np.uint8), "RGB")


def test_encode_image_is_unpadded_rgb8_and_decodes_to_itself() -> None:
    image = scene()
    msg = encode_image(image, HEADER)
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("rgb8", 99, 21, 33)
    assert msg.data == np.asarray(image).tobytes() and msg.header == HEADER
    np.testing.assert_array_equal(np.asarray(decode_image(msg)), np.asarray(image))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_images_decode_from_every_carrier(fmt) -> None:
    image = scene()
    msg = encode_compressed(image, HEADER, format=fmt)
    assert msg.format == fmt and Image.open(io.BytesIO(msg.data)).format == fmt.upper()
    ts = ros_typestore()
    theirs = ts.deserialize_cdr(msg.serialize(), "sensor_msgs/msg/CompressedImage")
    rclpy_like = SimpleNamespace(format=fmt, data=array.array("B", msg.data))
    # PNG is lossless; JPEG decodes to what PIL reads from the same file, near the original.
    expected = image if fmt == "png" else Image.open(io.BytesIO(msg.data)).convert("RGB")
    assert np.abs(np.asarray(expected, int) - np.asarray(image, int)).mean() < 20
    for carrier in (msg, theirs, rclpy_like):
        np.testing.assert_array_equal(np.asarray(decode_compressed(carrier)),
                                      np.asarray(expected))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    scene().save(buffer, format="GIF")
    return buffer.getvalue()


JPEG = encode_compressed(scene(), HEADER).data


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "compressed image 'jpeg' (0 bytes): no data"),
    (b"\x00garbage" * 10, "not a readable JPEG or PNG"),
    (gif_bytes(), "not a readable JPEG or PNG"),
    (JPEG[:40], "not a readable JPEG or PNG"),  # cut inside its header
    (JPEG[: JPEG.index(b"\xff\xda") + 20], "33x21 JPEG does not decode"),  # inside the scan
    (png_header_only(64, 64), "64x64 PNG does not decode"),  # 64 of 12352 bytes
    (png_header_only(20_000, 20_000), "more than the"),  # past PIL's own bomb limit
    (png_header_only(10_000, 10_000),
     f"10000x10000 is 100000000 pixels, more than the {MAX_PIXELS} accepted"),
])
def test_malformed_compressed_images_are_refused_with_the_reason(data, reason) -> None:
    start = time.perf_counter()
    with pytest.raises(MalformedImage) as refused:
        decode_compressed(SimpleNamespace(format="jpeg", data=data))
    assert reason in str(refused.value)
    assert time.perf_counter() - start < 0.5  # the bomb is refused from its header


def test_stamps_split_into_seconds_and_nanoseconds() -> None:
    header = header_at(1_700_000_000_123_456_789, "cam")
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (1_700_000_000,
                                                                         123_456_789, "cam")
    assert stamp_ns(header) == 1_700_000_000_123_456_789
    assert stamp_ns(m.Header(stamp=m.Time(sec=3, nanosec=999_999_999))) == 3_999_999_999


def test_detections_become_vision_msgs_and_come_back() -> None:
    detections = Detections(boxes=torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.5, 1.5, 2.5, 3.25]]),
                            scores=torch.tensor([0.875, 0.3125]),
                            labels=["red mug", "tasse à café ☕"])
    ts = ros_typestore()
    # The header may come from a bag (rosbags' object) as well as from our own messages.
    bag_header = ts.deserialize_cdr(m.Image(header=HEADER).serialize(),
                                    "sensor_msgs/msg/Image").header
    for header in (HEADER, bag_header):
        msg = detection_array(header, detections)
        assert msg.header == HEADER and [d.header for d in msg.detections] == [HEADER] * 2
        worked = [(30.0, 50.0, 40.0, 60.0), (1.5, 2.375, 2.0, 1.75)]  # centre, size by hand
        for detection, (cx, cy, sx, sy), label, score in zip(
                msg.detections, worked, detections.labels, (0.875, 0.3125), strict=True):
            box = detection.bbox
            assert (box.center.position.x, box.center.position.y, box.size_x, box.size_y,
                    box.center.theta) == (cx, cy, sx, sy, 0.0)
            [result] = detection.results
            assert (result.hypothesis.class_id, result.hypothesis.score) == (label, score)
            assert detection.id == ""
            assert result.pose.pose.orientation.w == 1.0 and set(result.pose.covariance) == {0}
        expected = [("red mug", 0.875, (10.0, 20.0, 50.0, 80.0)),
                    ("tasse à café ☕", 0.3125, (0.5, 1.5, 2.5, 3.25))]
        assert detections_from_array(msg) == expected
        read_back = ts.deserialize_cdr(msg.serialize(), "vision_msgs/msg/Detection2DArray")
        assert detections_from_array(read_back) == expected


def test_no_detections_is_an_empty_array_with_the_header() -> None:
    empty = Detections(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=[])
    msg = detection_array(HEADER, empty)
    assert msg.header == HEADER and msg.detections == [] and detections_from_array(msg) == []
