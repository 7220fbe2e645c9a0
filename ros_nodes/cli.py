"""`domainvlm ros ...`: the ROS 2 detection node and offline detection over rosbag2 files."""

from __future__ import annotations

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
