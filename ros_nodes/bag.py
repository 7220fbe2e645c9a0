"""Detection over a rosbag2 recording: a copy of the bag with the detections added.

Every connection and message of the input is copied byte for byte with its timestamp (the
output plays back exactly as the input did); each image on the chosen topic (raw Image or
CompressedImage) gets one `vision_msgs/Detection2DArray` at the image's bag timestamp with the
image's header, so tools that match detections to frames by stamp work on the result. MCAP and
sqlite3 in, MCAP or sqlite3 out. The output appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.serde import SerdeError

from domainvlm.atomic import publish, temp_dir_for
from domainvlm.errors import DataError
from domainvlm.outputs import check_folder, mark
from domainvlm.progress import Reporter
from domainvlm.ros import messages
from domainvlm.ros.conversions import detection_array
from domainvlm.ros.images import MalformedImage, decode_compressed, decode_image
from domainvlm.ros.node import NodeParams
from domainvlm.ros.typestore import ros_typestore

COMMAND = "ros bag-detect"
# The node's own output topic: a processed bag reads like one recorded with the node running.
DETECTIONS_TOPIC = NodeParams.detections_topic
DETECTION_TYPE = "vision_msgs/msg/Detection2DArray"
DECODERS: dict[str, Callable[[Any], Any]] = {
    "sensor_msgs/msg/Image": decode_image,
    "sensor_msgs/msg/CompressedImage": decode_compressed,
}
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
LISTED_MALFORMED = 10  # malformed images named one by one; the rest are only counted


@dataclass(frozen=True)
class BagReport:
    output: Path
    storage: str
    detections_topic: str
    messages: int   # copied from the input
    images: int     # on the image topic
    malformed: int  # of those, skipped: not decodable
    boxes: int      # detections written, over all images


def check_bag(source: Path, output: Path, *, topic: str, prompts: Sequence[str],
              detections_topic: str | None = None, storage: str | None = None,
              overwrite: bool = False) -> None:
    """Every refusal `bag_detect` would make, without a detector: callers check before
    loading a model."""
    with _open(Path(source)) as reader:
        _plan(reader, Path(source), Path(output), topic=topic, prompts=prompts,
              detections_topic=detections_topic, storage=storage, overwrite=overwrite)


def bag_detect(source: Path, output: Path, *, topic: str, prompts: Sequence[str], detector,
               score_threshold: float, nms_threshold: float,
               detections_topic: str | None = None, storage: str | None = None,
               overwrite: bool = False, progress: Reporter | None = None) -> BagReport:
    """Copy the bag `source` to the new folder `output` with detections of `prompts` for each
    image on `topic`, written on `detections_topic` (default DETECTIONS_TOPIC) in `storage`
    (mcap, sqlite3; default: the input's). Raises DataError (a bad input) or
    OutputExistsError before writing anything."""
    source, output = Path(source), Path(output)
    with _open(source) as reader:
        plan = _plan(reader, source, output, topic=topic, prompts=prompts,
                     detections_topic=detections_topic, storage=storage, overwrite=overwrite)
        decode = DECODERS[plan.msgtype]

        def detections_of(raw: bytes) -> messages.Detection2DArray:
            msg = ros_typestore().deserialize_cdr(raw, plan.msgtype)  # SerdeError if broken
            found = detector.detect(decode(msg), plan.prompts, score_threshold=score_threshold,
                                    nms_threshold=nms_threshold)
            return detection_array(msg.header, found)

        staging = temp_dir_for(output)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            bag = staging / output.name  # rosbags names the storage file after its folder
            with _disk_full_as_os_error(output), \
                    Writer(bag, version=8, storage_plugin=STORAGES[plan.storage]) as writer:
                counts = _copy(reader, writer, topic, plan.detections_topic, detections_of,
                               progress or Reporter(enabled=False))
            mark(bag, COMMAND)
            publish(bag, output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return BagReport(output, plan.storage, plan.detections_topic, *counts)


@contextlib.contextmanager
def _disk_full_as_os_error(path: Path) -> Iterator[None]:
    """sqlite reports a full disk as its own error; make it the OSError every writer gives."""
    try:
        yield
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


@dataclass(frozen=True)
class _Plan:
    msgtype: str
    prompts: list[str]
    detections_topic: str
    storage: str


def _plan(reader: Reader, source: Path, output: Path, *, topic: str, prompts: Sequence[str],
          detections_topic: str | None, storage: str | None, overwrite: bool) -> _Plan:
    """What `bag_detect` will do, or the reason it refuses (DataError, OutputExistsError)."""
    from domainvlm.detection.types import check_prompts

    prompts = check_prompts(prompts)
    if storage is not None and storage not in STORAGES:
        raise DataError(f"--storage {storage!r}: choose mcap or sqlite3")
    check_folder(output, COMMAND, inputs=[source], overwrite=overwrite)
    types = {c.msgtype for c in reader.connections if c.topic == topic}
    if not types:
        listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
        raise DataError(f"{source} has no topic {topic}; its topics: {listing}")
    if len(types) > 1 or not types <= set(DECODERS):
        raise DataError(f"{source}: topic {topic} holds {', '.join(sorted(types))}, not "
                        f"{' or '.join(DECODERS)}; pass --topic an image topic")
    detections_topic = detections_topic or DETECTIONS_TOPIC
    if any(c.topic == detections_topic for c in reader.connections):
        raise DataError(f"{source} already has a topic {detections_topic}; name another "
                        "for the detections with --detections-topic")
    return _Plan(types.pop(), prompts, detections_topic,
                 storage or ("mcap" if _is_mcap(reader) else "sqlite3"))


@contextlib.contextmanager
def _open(source: Path) -> Iterator[Reader]:
    """An open reader, or a DataError that says why `source` is not a readable rosbag2."""
    if not source.exists():
        raise DataError(f"{source}: no such bag; give a rosbag2 folder (or its .mcap / .db3 "
                        "file)")
    try:
        reader = Reader(source)
        reader.open()
    except (ReaderError, FileNotFoundError) as err:
        raise DataError(f"{source}: not a readable rosbag2 (MCAP or sqlite3) bag: "
                        f"{err}") from None
    try:
        yield reader
    finally:
        reader.close()


def _is_mcap(reader: Reader) -> bool:
    """Whether the bag (a folder, or one storage file) is MCAP rather than sqlite3."""
    storage = reader.storage
    files = storage.storages if isinstance(storage, DirectoryReader) else [storage]
    return isinstance(files[0], McapReader)


def _messages(reader: Reader) -> Iterator[tuple[Any, int, bytes]]:
    """The bag's messages in time order; a damaged storage file is a DataError."""
    try:
        yield from reader.messages()
    except Exception as err:  # apsw and the MCAP parser raise types of their own
        raise DataError(f"{reader.path}: the bag is damaged and cannot be read to its end "
                        f"({type(err).__name__}: {err}); nothing was written") from None


def _copy(reader: Reader, writer: Writer, topic: str, detections_topic: str,
          detections_of: Callable[[bytes], messages.Detection2DArray],
          reporter: Reporter) -> tuple[int, int, int, int]:
    """Copy every message, adding detections after each image; (messages, images, malformed,
    boxes)."""
    outputs = {c.id: writer.add_connection(
        c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest,
        serialization_format=c.ext.serialization_format,
        offered_qos_profiles=c.ext.offered_qos_profiles) for c in reader.connections}
    detections = writer.add_connection(detections_topic, DETECTION_TYPE,
                                       typestore=ros_typestore())
    messages = images = malformed = boxes = 0
    with reporter.task("detect", total=reader.message_count) as advance:
        for connection, timestamp, raw in _messages(reader):
            writer.write(outputs[connection.id], timestamp, raw)
            messages += 1
            if connection.topic == topic:
                images += 1
                try:
                    found = detections_of(raw)
                except (SerdeError, MalformedImage) as err:
                    malformed += 1
                    if malformed <= LISTED_MALFORMED:
                        reporter.line(f"skipped image {images} at {timestamp} ns: {err}")
                    if malformed == LISTED_MALFORMED:
                        reporter.line("further malformed images are counted, not listed")
                else:
                    boxes += len(found.detections)
                    writer.write(detections, timestamp, found.serialize())
            advance(images=images, malformed=malformed)
    return messages, images, malformed, boxes
