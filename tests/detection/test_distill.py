"""Distillation on base labels only: novel categories never reach a training target, a run
interrupted and resumed ends where an uninterrupted one does, and bad settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file
from testkit import run_cli

from domainvlm.detection.distill import DistillConfig, distill, load_training_data
from domainvlm.detection.tiny import build_tiny_detector
from domainvlm.errors import ConfigError, OutputExistsError, RunInterrupted
from domainvlm.nano.tabletop_world import SPLITS, write_tabletop
from domainvlm.progress import Reporter


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training images with EVERY object labelled, novel ones included: the run must drop
    them itself."""
    root = tmp_path_factory.mktemp("tabletop")
    write_tabletop(root / "train", images=8, size=(160, 120), seed=3, labels="all")
    build_tiny_detector("clip", root / "teacher")
    return root


def recipe(world: Path, tmp: Path, **changes) -> Path:
    settings = {"train": str(world / "train" / "instances.json"),
                "split": str(world / "train" / "split.json"), "teacher": str(world / "teacher"),
                "steps": 6, "batch_size": 2, "warmup_steps": 2, "save_every": 2,
                "distill_start": 0.3, "distill_proposals": 4,
                "student": {"frame": [160, 120], "channels": [8, 16, 32, 32],
                            "fpn_channels": 32, "box_head_dim": 64, "proposals_train": 64,
                            "proposals_test": 32}, **changes}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_novel_labels_never_reach_training_targets(world: Path, tmp_path: Path) -> None:
    instances = json.loads((world / "train" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    novel = set(SPLITS["easy"].novel)
    in_file = [names[a["category_id"]] for a in instances["annotations"]]
    assert any(name in novel for name in in_file)  # the file does label novel objects
    data = load_training_data(DistillConfig.from_yaml(recipe(world, tmp_path)),
                              Reporter(enabled=False))
    labels = [data.split.base[i - 1] for t in data.targets for i in t["labels"].tolist()]
    assert sorted(labels) == sorted(n for n in in_file if n not in novel)


def test_no_novel_name_reaches_the_text_tower_while_training(world: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """Every text the teacher encodes during a run, read back from its token ids."""
    seen: list[str] = []
    original = transformers.CLIPModel.get_text_features

    def recording(self, input_ids=None, **kwargs):
        seen.extend(tokenizer.batch_decode(input_ids, skip_special_tokens=True))
        return original(self, input_ids=input_ids, **kwargs)

    tokenizer = transformers.AutoTokenizer.from_pretrained(world / "teacher")
    monkeypatch.setattr(transformers.CLIPModel, "get_text_features", recording)
    distill(DistillConfig.from_yaml(recipe(world, tmp_path, steps=2)), tmp_path / "run",
            reporter=Reporter(enabled=False), cache_dir=tmp_path / "cache")
    text = " | ".join(seen)
    assert all(name in text for name in SPLITS["easy"].base)
    assert not [name for name in SPLITS["easy"].novel if name in text]


def test_interrupted_run_resumes_to_the_same_weights(world: Path, tmp_path: Path) -> None:
    config = DistillConfig.from_yaml(recipe(world, tmp_path))
    quiet = Reporter(enabled=False)
    straight = distill(config, tmp_path / "straight", reporter=quiet,
                       cache_dir=tmp_path / "cache")

    class CtrlC(Reporter):  # the user presses Ctrl-C while step 4 runs
        def task(self, description, total, completed=0):
            import contextlib

            @contextlib.contextmanager
            def bar():
                count = [completed]

                def advance(n=1, **fields):
                    count[0] += n
                    if description == "distilling" and count[0] == 3:
                        raise KeyboardInterrupt
                yield advance
            return bar()

    with pytest.raises(RunInterrupted, match="checkpoint"):
        distill(config, tmp_path / "cut", reporter=CtrlC(enabled=False),
                cache_dir=tmp_path / "cache")
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["step"] == 2
    with pytest.raises(OutputExistsError, match="--resume"):
        distill(config, tmp_path / "cut", reporter=quiet)
    resumed = distill(config, tmp_path / "cut", resume=True, reporter=quiet,
                      cache_dir=tmp_path / "cache")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_bad_recipes_get_one_clear_error(world: Path, tmp_path: Path, capsys,
                                         monkeypatch) -> None:
    path = recipe(world, tmp_path, steps=3)
    path.write_text(path.read_text() + "learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting.*learning_rat"):
        DistillConfig.from_yaml(path)
    code, _, err = run_cli(capsys, monkeypatch, "distill", "--config", path,
                           "--output", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and "learning_rat" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, monkeypatch, "distill", "--config",
                           recipe(world, tmp_path, distill_start=1.5), "--output", tmp_path / "o")
    assert code == 2 and "distill_start" in err
