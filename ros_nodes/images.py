"""ROS 2 image messages <-> PIL images, refusing malformed ones with a message that says why.

A camera driver's `sensor_msgs/Image` is raw rows of `step` bytes (padding allowed) in a named
encoding; a `CompressedImage` is a JPEG or PNG file. Every check that bounds memory (size,
encoding, step, buffer length; a compressed image's size read from its header) runs before any
pixel is touched, so a hostile or broken message costs nothing but a log line. Decoding works on
attributes only: our cyclonedds messages (`data` is bytes), rosbags' (a numpy array) and rclpy's
(`array.array`) alike, reading the buffer in place.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError

from domainvlm.ros import messages

MAX_PIXELS = 8192 * 8192  # larger is refused before any allocation


class MalformedImage(ValueError):
    """An image message that cannot be decoded; the message says what is wrong with it."""


# encoding -> (bytes per pixel, PIL mode, PIL raw mode for little- and big-endian data).
# 16-bit images keep their high byte; 8UCn carry no colour order, and OpenCV's (BGR) is what
# publishes them. Alpha is dropped, not composited.
_RAW: dict[str, tuple[int, str, tuple[str, str]]] = {
    "rgb8": (3, "RGB", ("RGB", "RGB")),
    "bgr8": (3, "RGB", ("BGR", "BGR")),
    "8UC3": (3, "RGB", ("BGR", "BGR")),
    "rgba8": (4, "RGB", ("RGBX", "RGBX")),
    "bgra8": (4, "RGB", ("BGRX", "BGRX")),
    "mono8": (1, "L", ("L", "L")),
    "8UC1": (1, "L", ("L", "L")),
    "mono16": (2, "L", ("L;16", "L;16B")),
    "16UC1": (2, "L", ("L;16", "L;16B")),
    "rgb16": (6, "RGB", ("RGB;16L", "RGB;16B")),
}
ENCODINGS = tuple(_RAW)
COMPRESSED_FORMATS = ("JPEG", "PNG")


def _buffer(data: Any, what: str) -> memoryview:
    """The message's bytes as a flat byte view, without copying."""
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as err:
        raise MalformedImage(f"{what}: data of type {type(data).__name__} is not a contiguous "
                             "byte buffer") from err


def check_image(msg: Any) -> memoryview:
    """The pixel bytes of a `sensor_msgs/Image` once its size, encoding, step and length agree;
    raises MalformedImage. Reads no pixel: cheap enough for a subscription callback."""
    height, width, encoding, step = int(msg.height), int(msg.width), str(msg.encoding), \
        int(msg.step)
    what = f"image {width}x{height} {encoding!r}"
    if height == 0 or width == 0:
        raise MalformedImage(f"{what}: zero size")
    if height * width > MAX_PIXELS:
        raise MalformedImage(f"{what}: {height * width} pixels, more than the {MAX_PIXELS} "
                             "accepted")
    if encoding not in _RAW:
        raise MalformedImage(f"{what}: unknown encoding; supported: {', '.join(ENCODINGS)} "
                             "(or publish a CompressedImage)")
    pixel_bytes = _RAW[encoding][0]
    if step < width * pixel_bytes:
        raise MalformedImage(f"{what}: step {step} is less than width*{pixel_bytes} = "
                             f"{width * pixel_bytes}")
    data = _buffer(msg.data, what)
    if data.nbytes != step * height:
        raise MalformedImage(f"{what}: data is {data.nbytes} bytes, step*height is "
                             f"{step * height}")
    return data


def decode_image(msg: Any) -> Image.Image:
    """RGB image from a `sensor_msgs/Image` (fields `height, width, encoding, is_bigendian,
    step, data`); raises MalformedImage."""
    data = check_image(msg)
    _, mode, rawmodes = _RAW[str(msg.encoding)]
    rawmode = rawmodes[1 if msg.is_bigendian else 0]
    size = (int(msg.width), int(msg.height))
    image = Image.frombytes(mode, size, data, "raw", rawmode, int(msg.step), 1)
    return image if mode == "RGB" else image.convert("RGB")


def decode_compressed(msg: Any) -> Image.Image:
    """RGB image from a `sensor_msgs/CompressedImage` (fields `format, data`; JPEG or PNG);
    the size in its header is checked before decoding. Raises MalformedImage."""
    data = _buffer(msg.data, f"compressed image {msg.format!r}")
    what = f"compressed image {msg.format!r} ({data.nbytes} bytes)"
    if data.nbytes == 0:
        raise MalformedImage(f"{what}: no data")
    try:
        with warnings.catch_warnings():  # PIL warns of big images: refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=COMPRESSED_FORMATS)
    except Image.DecompressionBombError as err:
        raise MalformedImage(f"{what}: more than the {MAX_PIXELS} pixels accepted "
                             f"({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MalformedImage(f"{what}: not a readable JPEG or PNG ({err})") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise MalformedImage(f"{what}: {width}x{height} is {width * height} pixels, more than "
                             f"the {MAX_PIXELS} accepted")
    try:
        image.load()
    except (OSError, ValueError) as err:
        raise MalformedImage(f"{what}: {width}x{height} {image.format} does not decode "
                             f"({err})") from None
    return image.convert("RGB")


def encode_image(image: Image.Image, header: messages.Header) -> messages.Image:
    """`sensor_msgs/Image` in rgb8, rows unpadded."""
    rgb = image.convert("RGB")
    return messages.Image(header=header, height=rgb.height, width=rgb.width, encoding="rgb8",
                          is_bigendian=0, step=3 * rgb.width, data=rgb.tobytes())


def encode_compressed(image: Image.Image, header: messages.Header,
                      format: str = "jpeg") -> messages.CompressedImage:
    """`sensor_msgs/CompressedImage` holding a JPEG or PNG file (`format` "jpeg" or "png")."""
    if format not in ("jpeg", "png"):
        raise ValueError(f"format {format!r}: choose 'jpeg' or 'png'")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=format.upper())
    return messages.CompressedImage(header=header, format=format, data=buffer.getvalue())
