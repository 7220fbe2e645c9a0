"""The training benchmark runs end to end and reports every figure (not the goals: timings vary),
and its comparisons are of equal work: the same questions, and the same answer tokens where TRL
trains on answers only, counted against the tokenizer."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
FRAMEWORK_FIGURES = ("samples_per_s", "samples_per_s_median_step", "end_to_end_s",
                     "end_to_end_samples_per_s", "peak_rss_mb", "peak_rss_mb_polled",
                     "answer_loss", "trainable_parameters", "supervised_tokens_per_s",
                     "questions", "supervised_tokens")
PACKED_FIGURES = ("questions_per_s", "questions_per_s_median_step", "supervised_tokens_per_s",
                  "end_to_end_s", "end_to_end_questions_per_s", "peak_rss_mb", "answer_loss",
                  "questions", "supervised_tokens", "sequences")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One --quick run of every mode: its JSON and its kept work folder."""
    workdir = tmp_path_factory.mktemp("train-throughput")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(workdir)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), workdir


def rows(workdir: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / "data" / name).read_text().splitlines()]


def answer_tokens(workdir: Path, data: list[dict[str, Any]]) -> int:
    """Tokens after the prompt in each whole rendered conversation (the answer and its
    end-of-turn), by the tokenizer alone: neither framework's labelling."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(workdir / "model")

    def ids(text: str) -> list[int]:
        return processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    total = 0
    for row in data:
        user = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": row["question"]}]}]
        prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        whole = processor.apply_chat_template(
            [*user, {"role": "assistant", "content": row["answer"]}], tokenize=False)
        assert ids(whole)[:len(ids(prompt))] == ids(prompt)
        total += len(ids(whole)) - len(ids(prompt))
    return total


@pytest.mark.slow
def test_single_row_figures(quick: tuple[dict[str, Any], Path]) -> None:
    result, workdir = quick
    for name in ("domainvlm", "trl"):
        figures = result[name]
        assert set(FRAMEWORK_FIGURES) <= set(figures)
        assert all(figures[key] > 0 for key in FRAMEWORK_FIGURES), figures
        assert figures["questions"] == len(rows(workdir, "train.jsonl"))
        assert figures["matmul_dtype"] == "float32"
    # Same LoRA on the same layers in both frameworks.
    assert result["domainvlm"]["trainable_parameters"] == result["trl"]["trainable_parameters"]
    assert result["base_answer_loss"] > 0
    for key in ("speedup", "speedup_median_step", "speedup_end_to_end", "rss_ratio"):
        assert result[key] > 0
    assert set(result["goal_met"]) == {"speedup_ge_1.5", "answer_loss_le_trl", "rss_not_higher",
                                       "all"}
    assert all(isinstance(flag, bool) for flag in result["goal_met"].values())
    config = result["config"]
    assert config["image_tokens"] == 64 and config["timed_steps"] == config["steps"] - 1
    assert len(set(config["torch_threads"].values())) == 1
    for name in ("domainvlm", "trl"):
        assert (workdir / f"{name}-0-run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_packed_questions_train_the_same_questions_and_answer_tokens(
        quick: tuple[dict[str, Any], Path]) -> None:
    result, workdir = quick
    packed = result["packed_questions"]
    train = rows(workdir, "train.jsonl")
    expected_tokens = answer_tokens(workdir, train)
    for name in ("domainvlm", "trl"):
        figures = packed[name]
        assert set(PACKED_FIGURES) <= set(figures)
        assert all(figures[key] > 0 for key in PACKED_FIGURES), figures
        assert figures["questions"] == len(train)
        assert figures["supervised_tokens"] == expected_tokens
    assert packed["equal_work"] == {"questions": len(train), "supervised_tokens": expected_tokens}
    # domainvlm trained one sequence per image, TRL one per question.
    assert packed["domainvlm"]["sequences"] == len({row["image"] for row in train})
    assert packed["trl"]["sequences"] == len(train)
    assert packed["unit"].startswith("questions_per_s")
    for key in ("speedup", "speedup_median_step", "speedup_supervised_tokens",
                "speedup_end_to_end", "rss_ratio"):
        assert packed[key] > 0


@pytest.mark.slow
def test_bf16_autocasts_both_frameworks_on_the_same_rows(
        quick: tuple[dict[str, Any], Path]) -> None:
    result, workdir = quick
    half = result["bf16"]
    head = rows(workdir, "train-bf16.jsonl")
    assert head == rows(workdir, "train.jsonl")[:len(head)]
    assert len(head) == result["config"]["modes"]["bf16"]["steps"] * result["config"]["batch_size"]
    for name in ("domainvlm", "trl"):
        figures = half[name]
        assert set(FRAMEWORK_FIGURES) <= set(figures)
        assert all(figures[key] > 0 for key in FRAMEWORK_FIGURES), figures
        assert figures["questions"] == len(head)
        assert figures["matmul_dtype"] == "bfloat16"
        assert figures["vs_float32"] > 0
    # Answer tokens are trained by domainvlm alone; TRL's default trains every token.
    assert half["domainvlm"]["supervised_tokens"] == answer_tokens(workdir, head)
    assert half["trl"]["supervised_tokens"] > half["domainvlm"]["supervised_tokens"]
    assert isinstance(half["cpu"]["native_bf16"], bool)
    assert isinstance(half["cpu"]["torch_cpu_capability"], str)
    for key in ("speedup", "speedup_median_step", "speedup_end_to_end", "rss_ratio"):
        assert half[key] > 0


def run(questions: int, tokens: int) -> dict[str, int]:
    return {"questions": questions, "supervised_tokens": tokens}


@pytest.mark.parametrize(("ours", "trl", "answers_only", "refused"), [
    (run(8, 30), run(8, 30), True, False),
    (run(8, 30), run(8, 31), True, True),    # one answer token apart
    (run(8, 30), run(8, 700), False, False),  # TRL's default loss: tokens differ by design
    (run(7, 30), run(7, 30), False, True),   # a question left out on both sides
    (run(8, 30), run(9, 30), False, True),   # a question trained twice
])
def test_unequal_work_is_refused(monkeypatch: pytest.MonkeyPatch, ours: dict[str, int],
                                 trl: dict[str, int], answers_only: bool, refused: bool) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    bench = importlib.import_module("train_throughput")
    plan = {"batch_size": 4,
            "modes": {"packed_questions": {"steps": 2, "trl_assistant_only_loss": answers_only}}}
    runs = {"packed_questions": {"domainvlm": [ours], "trl": [trl]}}
    if refused:
        with pytest.raises(SystemExit, match="unequal work in packed_questions"):
            bench.check_equal_work(plan, runs)
    else:
        bench.check_equal_work(plan, runs)
