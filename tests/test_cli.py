"""Bad input ends in one clear line, exit code 2, no traceback, and nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def cli(warm_domainvlm):
    """`domainvlm ARGS` as its own process (started warm)."""
    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([warm_domainvlm, *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=300)

    return run


@pytest.fixture(scope="module")
def text_only_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def bad_data(tmp_path, shapes_data) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    files = {
        "empty": "",
        "corrupt": json.dumps({"image": str(corrupt), "question": "q?", "answer": "a"}),
        "missing": json.dumps({"image": "nope.png", "question": "q?", "answer": "a"}),
        "no_answer": json.dumps({"image": str(corrupt), "question": "q?", "answer": " "}),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text(text + "\n" if text else "")
    return paths


CASES = [
    # (name, how to build the arguments, what the one error line must say)
    ("missing model folder", lambda m, d, b, t: ["--model", "./no/such/model", "--data", d],
     "model folder ./no/such/model does not exist"),
    ("not a VLM", lambda m, d, b, t: ["--model", t, "--data", d],
     "'llama' model, not an image-text-to-text"),
    ("corrupt image", lambda m, d, b, t: ["--model", m, "--data", b["corrupt"]],
     "corrupt.jsonl:1: image .*corrupt.png cannot be decoded"),
    ("missing image", lambda m, d, b, t: ["--model", m, "--data", b["missing"]],
     "missing.jsonl:1: image .*nope.png does not exist"),
    ("empty answer", lambda m, d, b, t: ["--model", m, "--data", b["no_answer"]],
     "no_answer.jsonl:1: `answer` is empty"),
    ("empty data set", lambda m, d, b, t: ["--model", m, "--data", b["empty"]],
     "the data set is empty"),
    ("rank zero", lambda m, d, b, t: ["--model", m, "--data", d, "--lora-r", "0"],
     r"`--lora-r` / `lora_r`: Input should be greater than 0 \(got 0\)"),
    ("infinite learning rate", lambda m, d, b, t: ["--model", m, "--data", d,
                                                   "--learning-rate", "inf"],
     r"`--learning-rate` / `learning_rate`: Input should be a finite number \(got inf\)"),
    ("nan warm-up", lambda m, d, b, t: ["--model", m, "--data", d, "--warmup-ratio", "nan"],
     r"`--warmup-ratio` / `warmup_ratio`: Input should be a finite number \(got nan\)"),
    ("bad method", lambda m, d, b, t: ["--model", m, "--data", d, "--method", "lorax"],
     r"`--method` / `method`: Input should be 'lora', 'dora', 'qlora' or 'full'"),
    ("bad target", lambda m, d, b, t: ["--model", m, "--data", d, "--lora-targets", "conv"],
     "`--lora-targets.0`"),
    ("part both ways", lambda m, d, b, t: ["--model", m, "--data", d, "--lora-targets",
                                           "language,projector", "--train-fully", "projector"],
     "projector: in both `lora_targets` and `train_fully`"),
]


@pytest.mark.parametrize(("name", "build", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(cli, tiny_models, shapes_data, bad_data, text_only_model,
                                     tmp_path, name, build, message):
    import re

    output = tmp_path / "out"
    args = build(tiny_models("llava"), shapes_data["train"], bad_data, text_only_model)
    result = cli("finetune", *args, "--output", output, "--max-steps", "1",
                 "--cache-dir", tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists(), "a failed run must not leave an output folder behind"


def test_output_holding_a_different_run_is_refused(cli, tiny_models, shapes_data, tmp_path):
    common = ["--model", tiny_models("llava"), "--data", shapes_data["train"], "--output",
              tmp_path / "out", "--max-steps", "1", "--batch-size", "4",
              "--cache-dir", tmp_path / "cache"]
    assert cli("finetune", *common).returncode == 0
    before = (tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes()
    result = cli("finetune", *common, "--lora-r", "4")
    assert result.returncode == 2
    assert "holds a different run (differs in: lora_r)" in result.stderr
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_debug_shows_the_traceback(cli, tmp_path):
    result = cli("--debug", "finetune", "--model", "./missing", "--data", "x.jsonl",
                 "--output", tmp_path / "o")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_yaml_config_is_validated_and_flags_win(cli, tiny_models, shapes_data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_models('llava')}\ndata: {shapes_data['train']}\n"
                      f"output: {tmp_path / 'out'}\nmax_steps: 2\nbatch_size: 4\n"
                      f"lora_r: 4\ncache_dir: {tmp_path / 'cache'}\n")
    assert cli("finetune", "--config", config, "--lora-r", "2").returncode == 0
    saved = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 2
    config.write_text(config.read_text() + "learning_rat: 0.1\n")
    result = cli("finetune", "--config", config, "--overwrite")
    assert result.returncode == 2
    assert "`--learning-rat` / `learning_rat`: unknown key" in result.stderr


@pytest.mark.parametrize("command", ["finetune", "eval", "merge", "tiny-model", "info",
                                     "synth-data"])
def test_every_command_has_help(cli, command):
    result = cli(command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


@pytest.mark.parametrize(("family", "architecture"), [
    ("qwen2-vl", "Qwen2VLForConditionalGeneration"),
    ("mllama", "MllamaForConditionalGeneration"),  # no family-table entry: the generic path
])
def test_tiny_model_command_writes_a_loadable_model(cli, tmp_path, family, architecture):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert cli("tiny-model", "--family", family, "--output", tmp_path / "m").returncode == 0
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path / "m")).__name__ == \
        architecture
    AutoProcessor.from_pretrained(tmp_path / "m")
    result = cli("tiny-model", "--family", "gpt", "--output", tmp_path / "g")
    assert result.returncode == 2 and "'gpt' is not one of 'llava'" in result.stderr


def test_info_describes_a_model(cli, tiny_models):
    result = cli("info", tiny_models("qwen2-vl"))
    assert result.returncode == 0, result.stderr
    assert "family: qwen2-vl" in result.stdout and "<|im_end|>" in result.stdout


@pytest.mark.parametrize(("argv", "overwrite", "expected"), [
    # (how it was started, overwrite in effect, the command that resumes it): hand-written
    (["/opt/venv/bin/domainvlm", "finetune", "--data", "my data.jsonl", "--overwrite"], True,
     "/opt/venv/bin/domainvlm finetune --data 'my data.jsonl' --no-overwrite --resume"),
    (["/x/domainvlm/cli.py", "finetune", "--config", "run.yaml", "--resume"], False,
     f"{sys.executable} -m domainvlm.cli finetune --config run.yaml --resume"),
    (["/opt/venv/bin/domainvlm", "finetune", "--config", "run.yaml"], True,  # from the YAML
     "/opt/venv/bin/domainvlm finetune --config run.yaml --no-overwrite --resume"),
])
def test_the_resume_command_is_the_same_command_line_plus_resume(argv, overwrite, expected):
    from domainvlm.cli import resume_command

    assert resume_command(argv, overwrite) == expected


def test_output_is_quiet_unless_verbose(tiny_models, shapes_data, tmp_path):
    """Other libraries' deprecation warnings and weight-loading bars stay out of normal output;
    `--verbose` shows the bars (so they are there to hide). Our calls raise no deprecation
    warning now (tests/test_compat.py); pydicom's warnings: tests/medical/test_dicom_cli.py."""
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS",
                        "DOMAINVLM_QUIET")}

    def run(*flags: str, output: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "domainvlm.cli", *flags, "finetune", "--model",
             str(tiny_models("llava")), "--data", str(shapes_data["train"]), "--output",
             str(tmp_path / output), "--max-steps", "1", "--batch-size", "2",
             "--cache-dir", str(tmp_path / "cache")],
            capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    quiet, loud = run(output="quiet"), run("--verbose", output="loud")
    assert "Loading weights" in loud
    assert "Loading weights" not in quiet and "Warning" not in quiet
    assert "fine-tuning" in quiet  # our own progress stays
