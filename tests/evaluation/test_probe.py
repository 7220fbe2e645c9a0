"""The linear probe reads what the image features carry, and nothing they do not."""

from __future__ import annotations

import json
import random
import subprocess

import pytest
from PIL import Image

from domainvlm.errors import ConfigError
from domainvlm.evaluation.probe import probe_closed_questions

COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200)}


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """100 single-colour images (60 train, 40 test), each with a question its pixels answer,
    one they do not (a coin flip), an open one and a false-premise one."""
    root = tmp_path_factory.mktemp("probe-data")
    rng = random.Random(0)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for index in range(100):
        colour = rng.choice(sorted(COLOURS))
        shade = tuple(min(255, max(0, v + rng.randint(-30, 30))) for v in COLOURS[colour])
        name = f"image_{index:03d}.png"
        Image.new("RGB", (64, 64), shade).save(root / name)
        rows = [("Is the image red?", "yes" if colour == "red" else "no", "closed", True,
                 "colour"),
                ("Was it taken on a Monday?", rng.choice(("yes", "no")), "closed", True,
                 "unrelated"),
                ("What colour is it?", colour, "open", True, "open colour"),
                ("How large is the lesion?", "There is none.", "open", False,
                 "false premise")]
        split = "train" if index < 60 else "test"
        splits[split] += [{"image": name, "question": q, "answer": a, "question_type": t,
                           "answerable": ok, "category": c} for q, a, t, ok, c in rows]
    for split, rows in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_probe_reads_what_the_pixels_hold_and_not_what_they_do_not(tiny_models, colour_data):
    result = probe_closed_questions(str(tiny_models("llava")), str(colour_data / "train.jsonl"),
                                    str(colour_data / "test.jsonl"))
    by_category = result["by_category"]
    assert set(by_category) == {"colour", "unrelated"}  # open and false premise are not probed
    colour, unrelated = by_category["colour"], by_category["unrelated"]
    assert colour["n"] == unrelated["n"] == 40
    # Even a random tiny model's features separate red from blue; the baseline cannot.
    assert colour["probe_accuracy"] >= 0.95
    assert colour["baseline_accuracy"] <= 0.65
    # A coin flip per image is not in the pixels: fitting it on train does not carry to test.
    assert unrelated["probe_accuracy"] < 0.75
    assert result["overall"]["n"] == 80


def test_probe_command_prints_and_writes_the_result(warm_domainvlm, tiny_models, colour_data,
                                                    tmp_path):
    out = tmp_path / "probe" / "result.json"
    done = subprocess.run(
        [warm_domainvlm, "probe", "--model", str(tiny_models("llava")),
         "--train", str(colour_data / "train.jsonl"), "--test", str(colour_data / "test.jsonl"),
         "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads(out.read_text())["by_category"]["colour"]
    assert (f"colour: probe {100 * written['probe_accuracy']:.1f}%, commonest answer "
            f"{100 * written['baseline_accuracy']:.1f}% (40 test questions)") in done.stdout


@pytest.mark.parametrize("case", ["open questions only", "test is train"])
def test_probe_refuses_data_it_cannot_score_honestly(warm_domainvlm, tiny_models, colour_data,
                                                     tmp_path, case):
    train = colour_data / "train.jsonl"
    if case == "open questions only":
        rows = [json.loads(x) for x in train.read_text().splitlines()]
        train = tmp_path / "open.jsonl"
        train.write_text("".join(json.dumps({**r, "image": str(colour_data / r["image"])})
                                 + "\n" for r in rows if r["question_type"] == "open"))
        expected = "nothing to probe"
    else:
        expected = "60 image(s) of"
    done = subprocess.run(
        [warm_domainvlm, "probe", "--model", str(tiny_models("llava")),
         "--train", str(train), "--test", str(colour_data / "train.jsonl")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_probe_of_an_adapter_and_its_base_from_one_tower_pass(tiny_models, colour_data,
                                                              tmp_path, monkeypatch):
    import torch

    from domainvlm.data.records import load_records
    from domainvlm.evaluation.probe import image_features
    from domainvlm.models.vision_cache import TowerMemo
    from domainvlm.train.config import build_config
    from domainvlm.train.loop import finetune

    base = str(tiny_models("llava"))
    adapter = str(finetune(build_config(dict(
        model=base, data=str(colour_data / "train.jsonl"), output=str(tmp_path / "run"),
        train_fully=["projector"], max_steps=3, batch_size=8, learning_rate=5e-2))).adapter)
    records = load_records(colour_data / "test.jsonl")[:12]
    keys = {id(r): str(r.images[0]) for r in records}
    computed = []  # image rows each TowerMemo really ran the tower on
    exit_memo = TowerMemo.__exit__
    monkeypatch.setattr(TowerMemo, "__exit__",
                        lambda memo, *exc: (computed.append(memo.computed), exit_memo(memo)))
    both = image_features(adapter, records, keys, base_too=True)
    assert computed == [3]  # 3 images: the tower once each, for the base and the adapter
    alone = image_features(base, records, keys)["model"]
    for key in alone:
        assert torch.allclose(both["base"][key], alone[key], atol=1e-5)
        assert not torch.allclose(both["model"][key], alone[key], atol=1e-3)
    train, test = str(colour_data / "train.jsonl"), str(colour_data / "test.jsonl")
    result = probe_closed_questions(adapter, train, test, base_too=True)
    assert result["base"] == {k: v for k, v in probe_closed_questions(base, train, test).items()
                              if k != "model"}
    with pytest.raises(ConfigError, match="not an adapter folder, so it has no base model"):
        probe_closed_questions(base, train, test, base_too=True)
