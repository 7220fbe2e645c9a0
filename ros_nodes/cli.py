"""`domainvlm ros ...`: the ROS 2 detection node and offline detection over rosbag2 files."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="ROS 2: run the open-vocabulary detection node, or detect over a "
                  "rosbag2 recording.", no_args_is_help=True, rich_markup_mode=None)

# The options `run` and `bag-detect` share: defined once.
Prompts = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045 (typer needs Optional)
    "--prompt", metavar="TEXT", help="A category to find, in words; repeat for several: "
    "--prompt 'red mug' --prompt 'blue box'.")]
Model = Annotated[str, typer.Option(
    help="A distilled detector folder (domainvlm distill), or an OWLv2 / OWL-ViT / Grounding "
    "DINO hub id or folder. Empty: the shipped robot detector.")]
Backend = Annotated[str, typer.Option(
    help="vild (a distilled student), owlv2, owlvit or grounding-dino.")]
ScoreThreshold = Annotated[float, typer.Option(min=0.0, max=1.0,
                                               help="Keep detections scoring at least this.")]
NmsThreshold = Annotated[float, typer.Option(min=0.0, max=1.0,
                                             help="Overlap (IoU) above which a lower-scoring "
                                             "box of the same prompt is dropped.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")]


def _transport(choice: str) -> str:
    """auto: rclpy when it imports (a sourced ROS 2 install), else plain DDS."""
    from domainvlm.errors import ConfigError

    if choice not in ("auto", "dds", "rclpy"):
        raise ConfigError(f"--transport is {choice!r}: auto, dds or rclpy")
    if choice == "dds":
        return choice
    try:
        import rclpy  # noqa: F401
    except ImportError:
        if choice == "rclpy":
            raise ConfigError("--transport rclpy, but rclpy does not import: source a ROS 2 "
                              "install first (source /opt/ros/jazzy/setup.bash), or use "
                              "--transport dds") from None
        return "dds"
    return "rclpy"


@app.command("run")
def run_command(
    prompt: Prompts = None,
    params: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--params", help="A ROS 2 parameters file (`grounded_detector: ros__parameters:`), "
        "such as config/params.yaml of the domainvlm_ros package. Options given here win.",
        exists=True, dir_okay=False)] = None,
    model: Annotated[Optional[str], Model.__metadata__[0]] = None,  # noqa: UP045
    backend: Annotated[Optional[str], Backend.__metadata__[0]] = None,  # noqa: UP045
    score_threshold: Annotated[Optional[float],  # noqa: UP045
                               ScoreThreshold.__metadata__[0]] = None,
    nms_threshold: Annotated[Optional[float], NmsThreshold.__metadata__[0]] = None,  # noqa: UP045
    device: Annotated[Optional[str], Device.__metadata__[0]] = None,  # noqa: UP045
    image_topic: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Camera topic (sensor_msgs/Image) [default: /camera/image_raw].")] = None,
    compressed: Annotated[Optional[bool], typer.Option(  # noqa: UP045
        "--compressed/--raw", help="Subscribe IMAGE_TOPIC/compressed "
        "(sensor_msgs/CompressedImage) instead of raw images.", show_default=False)] = None,
    detections_topic: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Where vision_msgs/Detection2DArray goes [default: "
        "/grounded_detector/detections].")] = None,
    annotated: Annotated[Optional[bool], typer.Option(  # noqa: UP045
        "--annotated/--no-annotated", help="Also publish the image with boxes drawn "
        "(/grounded_detector/annotated).", show_default=False)] = None,
    input_qos: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="sensor_data (best effort, keep last 1) or reliable.")] = None,
    output_qos: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="reliable (keep last 10) or sensor_data.")] = None,
    transport: Annotated[str, typer.Option(
        help="auto: rclpy when a sourced ROS 2 install provides it, else plain DDS "
        "(cyclonedds, ROS 2's wire format); or rclpy, or dds.")] = "auto",
) -> None:
    """Run the grounded_detector node: camera images in, vision_msgs/Detection2DArray out.

    Works with or without ROS 2 installed: without it the node speaks ROS 2 over DDS directly
    (domain from ROS_DOMAIN_ID, network from CYCLONEDDS_URI), so `ros2 topic echo
    /grounded_detector/detections` on a ROS 2 machine of the same domain sees it. Change the
    prompts while it runs: `ros2 param set /grounded_detector prompts "['red mug']"`.
    Ctrl-C stops it cleanly.

    Example: domainvlm ros run --prompt "red mug" --prompt "blue box"
    """
    from domainvlm.errors import ConfigError
    from domainvlm.ros.node import NodeParams, ParameterError

    given = {"prompts": prompt or None, "model": model, "backend": backend,
             "score_threshold": score_threshold, "nms_threshold": nms_threshold,
             "device": device, "image_topic": image_topic,
             "image_transport": None if compressed is None
             else ("compressed" if compressed else "raw"),
             "detections_topic": detections_topic, "publish_annotated": annotated,
             "input_qos": input_qos, "output_qos": output_qos}
    base = NodeParams.from_yaml(params) if params else NodeParams()
    try:
        node_params = base.updated({k: v for k, v in given.items() if v is not None},
                                   running=False)
    except ParameterError as exc:
        raise ConfigError(str(exc)) from None
    if _transport(transport) == "rclpy":
        from domainvlm.ros.rclpy_node import run as run_rclpy

        run_rclpy(node_params)
        return
    _run_dds(node_params)


def _run_dds(params) -> None:
    import signal
    import threading

    from domainvlm.ros.dds import DdsGroundedDetector, domain_id
    from domainvlm.ros.node import GroundedDetectorCore

    domain = domain_id()  # a bad ROS_DOMAIN_ID fails before minutes of model loading
    typer.echo("grounded_detector: loading the detector ...", err=True)
    core = GroundedDetectorCore(params)
    core.load()
    node = DdsGroundedDetector(core)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    kind = "CompressedImage" if params.image_transport == "compressed" else "Image"
    source = params.image_topic + ("/compressed" if kind == "CompressedImage" else "")
    typer.echo(f"grounded_detector: {source} ({kind}, {params.input_qos}) -> "
               f"{params.detections_topic} (Detection2DArray, {params.output_qos}); prompts: "
               f"{', '.join(params.prompts)}; ROS_DOMAIN_ID {domain}; Ctrl-C stops",
               err=True)
    try:
        node.spin(stop)
    finally:
        node.close()
    s = core.stats
    typer.echo(f"grounded_detector: stopped; {s.processed} frame(s) processed, {s.dropped} "
               f"dropped for newer ones, {s.malformed} malformed", err=True)


def node_main() -> None:
    """The `grounded_detector` executable of the ament package (`ros2 run domainvlm_ros
    grounded_detector`, `ros2 launch`): the rclpy lifecycle node when rclpy imports."""
    import sys

    if _transport("auto") == "rclpy":
        from domainvlm.ros.rclpy_node import main

        main(sys.argv)
        return
    from domainvlm.cli import main as domainvlm_main

    sys.argv = ["domainvlm", "ros", "run", *sys.argv[1:]]
    domainvlm_main()
Storage = enum.Enum("Storage", {"mcap": "mcap", "sqlite3": "sqlite3"}, type=str)


@app.command("bag-detect")
def bag_detect_command(
    source: Annotated[Path, typer.Argument(
        metavar="IN", help="A rosbag2 recording: its folder (MCAP or sqlite3), or its .mcap / "
        ".db3 file.")],
    output: Annotated[Path, typer.Argument(
        metavar="OUT", help="The bag folder to write: every topic of IN, plus the "
        "detections.")],
    prompt: Prompts = None,
    topic: Annotated[str, typer.Option(
        help="The image topic: sensor_msgs/Image or sensor_msgs/CompressedImage.")]
    = "/camera/image_raw",
    detections_topic: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Where the vision_msgs/Detection2DArray go [default: the node's own, "
        "/grounded_detector/detections].")] = None,
    storage: Annotated[Optional[Storage], typer.Option(  # noqa: UP045
        help="Storage format of OUT [default: IN's].")] = None,
    model: Model = "",
    backend: Backend = "vild",
    score_threshold: ScoreThreshold = 0.3,
    nms_threshold: NmsThreshold = 0.5,
    device: Device = "cpu",
    overwrite: Annotated[bool, typer.Option(
        help="Replace OUT if it is an earlier `ros bag-detect` output.")] = False,
) -> None:
    """Detect objects named in words in every image of a rosbag2 recording.

    OUT holds IN's messages, byte for byte with their timestamps, plus one
    vision_msgs/Detection2DArray per image at the image's timestamp with its header. Exit code
    1 when malformed images were skipped (listed on stderr).

    Example: domainvlm ros bag-detect run1 run1-detected --topic /camera/image_raw --prompt
    "red mug" --prompt "blue box"
    """
    from domainvlm.detection.detector import load_detector
    from domainvlm.progress import Reporter
    from domainvlm.ros.bag import bag_detect, check_bag

    options = {"topic": topic, "prompts": prompt or [], "detections_topic": detections_topic,
               "storage": storage.value if storage else None, "overwrite": overwrite}
    check_bag(source, output, **options)  # bad input fails before the model loads
    from domainvlm.ros.node import default_model

    detector = load_detector(model or default_model(), backend=backend, device=device)
    report = bag_detect(source, output, detector=detector, score_threshold=score_threshold,
                        nms_threshold=nms_threshold, progress=Reporter(), **options)
    images = report.images - report.malformed
    typer.echo(f"{images} images of {topic} -> {report.boxes} detections on "
               f"{report.detections_topic}")
    if report.malformed:
        typer.echo(f"{report.malformed} malformed image(s) skipped, without detections",
                   err=True)
    typer.echo(f"wrote {report.output} ({report.storage}: {report.messages} messages copied, "
               f"{images} Detection2DArray added)")
    if report.malformed:
        raise typer.Exit(1)
