"""`domainvlm ros run`: bad input ends in one clear line before any model or DDS work."""

from __future__ import annotations

import importlib.util

import pytest
from testkit import run_cli

ERRORS = [
    (["--score-threshold", "1.5"], {}, r"--score-threshold.*less than or equal to 1"),
    (["--backend", "yolo"], {}, r"backend is 'yolo': one of vild, owlv2"),
    (["--image-topic", "camera"], {}, r"image_topic is 'camera': an absolute ROS topic"),
    (["--prompt", "mug", "--prompt", "mug"], {}, r"prompts: prompt 2 .* repeats prompt 1"),
    (["--input-qos", "fast"], {}, r"input_qos is 'fast': one of sensor_data, reliable"),
    (["--transport", "zenoh"], {}, r"--transport is 'zenoh': auto, dds or rclpy"),
    ([], {"ROS_DOMAIN_ID": "999"}, r"ROS_DOMAIN_ID is '999': a whole number from 0 to 232"),
    ([], {"ROS_DOMAIN_ID": "one"}, r"ROS_DOMAIN_ID is 'one'"),
]
if importlib.util.find_spec("rclpy") is None:  # where ROS 2 is sourced this would start it
    ERRORS.append((["--transport", "rclpy"], {}, r"rclpy does not import: source a ROS 2"))


@pytest.mark.parametrize(("args", "env", "message"), ERRORS,
                         ids=[" ".join(a) or next(iter(e.values())) for a, e, _ in ERRORS])
def test_bad_input_is_one_line_before_any_work(args, env, message, capsys, monkeypatch):
    import re

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli(capsys, monkeypatch, "ros", "run", *args)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert "loading the detector" not in err


def test_a_bad_params_file_is_one_line(tmp_path, capsys, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text("grounded_detector:\n  ros__parameters:\n    score_threshold: high\n")
    code, _, err = run_cli(capsys, monkeypatch, "ros", "run", "--params", params)
    assert code == 2 and err.count("error:") == 1, err
    assert f"{params}: score_threshold must be a number, not 'high'" in err
