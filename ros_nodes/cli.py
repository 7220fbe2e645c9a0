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
    "--prompt", help="A category to find, in words; repeat for several: --prompt 'red mug' "
    "--prompt 'blue box'.")]
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
    if model:
        source_model = model
    else:
        from domainvlm.ros.node import default_model

        source_model = default_model()
    detector = load_detector(source_model, backend=backend, device=device)
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
