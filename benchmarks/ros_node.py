"""The ROS 2 node's overhead: the real node process over DDS against the detector in-process.

Side by side in one run, on 640x480 tabletop frames with the same prompts and detector:
1. baseline: the detector's own frames per second in this process (`Detector.detect`),
   measured before and after the node runs (the mean is the baseline; both are printed, and
   the load average: a busy machine shows as the two disagreeing);
2. latency: frames sent slower than the detector goes (each reaches an idle node); added
   latency = publish -> detections received, minus the node's model time (its diagnostics'
   model_p50_ms), at p50 and p95;
3. throughput: frames sent about twice as fast as the detector goes; the node's fps counts the
   detections received per second; stale = frames processed while a newer one had arrived
   (the node's diagnostics) plus any detections arriving out of stamp order.

Every DDS participant stays on loopback (CYCLONEDDS_URI: interface lo, multicast off, peer
127.0.0.1) in a ROS domain of its own.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ros_node.py [--seconds 20] [--quick]

Prints JSON; goals: fps_ratio (node / in-process) >= 0.9, added_latency_p50_ms <= 10,
stale == 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PROMPTS = ["red mug", "blue box", "metal can", "green bottle"]
SIZE = (640, 480)
TOPIC = "/bench/camera/image_raw"
DETECTIONS = "/bench/detections"


def _frames(count: int):
    from domainvlm.nano.tabletop_world import render_scene, scene_seed

    return [render_scene(scene_seed(4242, i), size=SIZE)[0] for i in range(count)]


def baseline_fps(detector, images, seconds: float) -> tuple[float, float]:
    """(frames/s, p50 ms) of `detector` called in this process."""
    detector.detect(images[0], PROMPTS)  # warm-up
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t = time.perf_counter()
        detector.detect(images[len(times) % len(images)], PROMPTS)
        times.append(time.perf_counter() - t)
    return len(times) / sum(times), statistics.median(times) * 1e3


class _Node:
    def __init__(self) -> None:
        args = [a for p in PROMPTS for a in ("--prompt", p)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "domainvlm.cli", "ros", "run", "--transport", "dds",
             "--image-topic", TOPIC, "--detections-topic", DETECTIONS, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.ready = threading.Event()
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "Ctrl-C stops" in line:
                self.ready.set()

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def _send(peer, messages, rate_hz: float, seconds: float) -> dict[int, int]:
    """Publish at `rate_hz` for `seconds`; {stamp ns: monotonic publish time ns}."""
    from domainvlm.ros.conversions import header_at

    sent: dict[int, int] = {}
    period = 1.0 / rate_hz
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        message = messages[i % len(messages)]
        stamp = time.time_ns()
        message.header = header_at(stamp, "camera")
        sent[stamp] = time.monotonic_ns()
        peer.publish(message)
        i += 1
        time.sleep(max(0.0, start + i * period - time.monotonic()))
    return sent


def _collect(peer, settle: float) -> list:
    import queue

    time.sleep(settle)
    out = []
    while True:
        try:
            out.append(peer.detections.get_nowait())
        except queue.Empty:
            return out


def _diagnostics(peer) -> dict[str, str]:
    import queue

    latest = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            latest = peer.diagnostics.get(timeout=1.5)
        except queue.Empty:
            break
        if peer.diagnostics.empty():
            break
    return {kv.key: kv.value for kv in latest.message.status[0].values} if latest else {}


def run(seconds: float) -> dict:
    from domainvlm.ros.conversions import header_at, stamp_ns
    from domainvlm.ros.dds import LOOPBACK_CYCLONEDDS
    from domainvlm.ros.images import encode_image
    from domainvlm.ros.node import percentile
    from domainvlm.ros.peer import RosPeer

    os.environ["CYCLONEDDS_URI"] = LOOPBACK_CYCLONEDDS
    os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(101, 200))
    from domainvlm.detection.detector import Detector, shipped_detector

    load_before = os.getloadavg()[0]
    images = _frames(6)
    detector = Detector.load(shipped_detector())
    fps, model_ms = baseline_fps(detector, images, seconds / 2)
    messages = [encode_image(image, header_at(0, "camera")) for image in images]

    node = _Node()
    if not node.ready.wait(180):
        raise SystemExit("node did not start:\n" + "\n".join(node.lines[-20:]))
    peer = RosPeer(image_topic=TOPIC, detections_topic=DETECTIONS)
    peer.wait_for_node()
    _send(peer, messages, rate_hz=fps / 2, seconds=min(3.0, seconds / 4))  # warm-up
    _collect(peer, 2.0)
    _diagnostics(peer)

    sent = _send(peer, messages, rate_hz=fps / 2, seconds=seconds / 2)
    received = _collect(peer, 2.0)
    node_model_ms = float(_diagnostics(peer).get("model_p50_ms", "nan"))
    latencies = sorted((r.at_ns - sent[stamp_ns(r.message.header)]) / 1e6 for r in received
                       if stamp_ns(r.message.header) in sent)

    overload = fps * 2  # twice what the detector does: frames must be dropped
    sent = _send(peer, messages, rate_hz=overload, seconds=seconds)
    received = [r for r in _collect(peer, 2.0) if stamp_ns(r.message.header) in sent]
    stamps = [stamp_ns(r.message.header) for r in received]
    window = (received[-1].at_ns - received[0].at_ns) / 1e9 if len(received) > 1 else 0.0
    node_fps = (len(received) - 1) / window if window else 0.0
    diagnostics = _diagnostics(peer)
    peer.close()
    exit_code = node.stop()
    fps_after, model_ms_after = baseline_fps(detector, images, seconds / 2)
    fps_before, fps = fps, (fps + fps_after) / 2

    added_p50 = percentile(latencies, 0.5) - node_model_ms if latencies else float("nan")
    return {
        "image": f"{SIZE[0]}x{SIZE[1]} rgb8",
        "prompts": len(PROMPTS),
        "in_process": {"fps": round(fps, 2), "fps_before": round(fps_before, 2),
                       "fps_after": round(fps_after, 2),
                       "model_p50_ms": round((model_ms + model_ms_after) / 2, 1)},
        "node": {"fps": round(node_fps, 2), "model_p50_ms": node_model_ms,
                 "published_fps": round(overload, 2), "frames_sent": len(sent),
                 "detections_received": len(received),
                 "dropped_for_newer": int(diagnostics.get("dropped", -1)),
                 "latency_p50_ms": round(percentile(latencies, 0.5), 1),
                 "latency_p95_ms": round(percentile(latencies, 0.95), 1),
                 "exit_code_after_sigint": exit_code},
        "fps_ratio": round(node_fps / fps, 3),
        "added_latency_p50_ms": round(added_p50, 1),
        "stale": int(diagnostics.get("stale", -1)) + sum(b <= a for a, b in
                                                          zip(stamps, stamps[1:], strict=False)),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "goals": {"fps_ratio": 0.9, "added_latency_p50_ms": 10.0, "stale": 0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of the throughput phase (the others scale with it)")
    parser.add_argument("--quick", action="store_true", help="a 4-second smoke run")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    result = run(4.0 if args.quick else args.seconds)
    if args.output:
        from domainvlm.atomic import write_json

        write_json(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
