"""The runtime: one tiny LLaVA base with real LoRA, DoRA and projector adapters from the store,
checked against `domainvlm.answer` loading each adapter folder on its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stocked import KINDS, images

import domainvlm
from domainvlm.adapters.errors import AdapterIntegrityError, AdapterNotFound
from domainvlm.adapters.runtime import Query, Runtime
from domainvlm.adapters.store import BASE
from domainvlm.errors import BaseMismatchError

TOKENS = 6
QUESTIONS = ["What is shown?", "Is there a nodule?", "Which side?"]


@pytest.fixture(scope="module")
def runtime(world):
    return Runtime(world.base, world.store, batch_size=4)


@pytest.fixture(scope="module")
def pictures():
    return images(3)


def oracle(world, who: str, image, question: str) -> str:
    """The answer of `domainvlm.answer` with the adapter's own folder (or the base folder)."""
    model = world.base if who == BASE else world.sources[who]
    return domainvlm.answer(str(model), image, question, max_new_tokens=TOKENS)


def ask(world, who: str, image, question: str) -> Query:
    return Query([image], question, BASE if who == BASE else world.refs[who], TOKENS)


def test_a_mixed_batch_answers_each_row_as_its_adapter_alone(world, runtime, pictures):
    rows = [("chest.ct", 0, 0), ("brain", 1, 1), (BASE, 2, 2), ("dora", 0, 1),
            ("chest.ct", 1, 2), ("proj", 2, 0), ("hand", 0, 2), (BASE, 0, 0)]
    queries = [ask(world, who, pictures[i], QUESTIONS[q]) for who, i, q in rows]
    runtime.load(world.refs["proj"])  # its projector wrapper in place while the mix runs
    replies = runtime.answer(queries)
    expected = [oracle(world, who, pictures[i], QUESTIONS[q]) for who, i, q in rows]
    assert [r.answer for r in replies] == expected
    assert [r.adapter for r in replies] == [q.adapter for q in queries]
    # The adapters really answer differently, so a row answered by the wrong one would show.
    same_question = [oracle(world, who, pictures[0], QUESTIONS[0]) for who in [BASE, *KINDS]]
    assert len(set(same_question)) == len(same_question)


def test_b_groups_keep_what_peft_cannot_mix_apart(world, runtime):
    refs = world.refs
    names = ["chest.ct", "dora", "brain", BASE, "proj", "dora", "chest.ct", "hand"]
    queries = [Query([], "q", BASE if n == BASE else refs[n]) for n in names]
    assert runtime.groups(queries) == [[0, 2, 3, 6, 7], [1, 5], [4]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([BASE, *KINDS]), st.sampled_from([4, 8])),
                min_size=1, max_size=12))
def test_b_groups_partition_in_order_and_never_mix_the_unmixable(world, runtime, drawn):
    queries = [Query([], "q", BASE if n == BASE else world.refs[n], t) for n, t in drawn]
    groups = runtime.groups(queries)
    assert sorted(i for g in groups for i in g) == list(range(len(queries)))
    for group in groups:
        assert group == sorted(group)
        assert len({queries[i].max_new_tokens for i in group}) == 1
        who = {drawn[i][0] for i in group}
        if who & {"dora", "proj"}:
            assert len(who) == 1, (group, who)  # alone: not even with the base
    mixable = {(n, t) for n, t in drawn if n not in ("dora", "proj")}
    assert len([g for g in groups if drawn[g[0]][0] not in ("dora", "proj")]) == \
        len({t for _, t in mixable})  # one mixed group per max_new_tokens


@pytest.mark.parametrize("forced, error", [("dora", "DoRA"), ("proj", "Mixed batching")])
def test_b_peft_refuses_the_mix_and_the_runtime_recovers(world, pictures, forced, error):
    """Forced past groups(), PEFT raises; the runtime is left answering correctly (peft leaves
    its per-row hooks behind when generate raises)."""
    runtime = Runtime(world.base, world.store)
    refs = [world.refs["chest.ct"], world.refs[forced]]
    for ref in refs:
        runtime.load(ref)
    query = ask(world, "chest.ct", pictures[0], QUESTIONS[0])
    with pytest.raises((ValueError, TypeError), match=error):
        runtime._generate([query, query], refs)
    assert runtime.answer([query])[0].answer == oracle(world, "chest.ct", pictures[0],
                                                       QUESTIONS[0])


def test_c_least_recently_used_adapters_are_unloaded_and_reload(world, pictures):
    runtime = Runtime(world.base, world.store, max_loaded=2)
    a, b, c = (world.refs[n] for n in ("chest.ct", "brain", "dora"))
    for ref in (a, b, c):
        runtime.load(ref)
    assert runtime.loaded() == [b, c]
    query = ask(world, "chest.ct", pictures[1], QUESTIONS[1])
    assert runtime.answer([query])[0].answer == oracle(world, "chest.ct", pictures[1],
                                                       QUESTIONS[1])
    assert runtime.loaded() == [c, a]
    # A batch needing three mixable adapters runs as groups of at most two.
    three = [ask(world, n, pictures[0], QUESTIONS[0]) for n in ("chest.ct", "brain", "hand")]
    assert runtime.groups(three) == [[0, 1], [2]]
    assert [r.answer for r in runtime.answer(three)] == \
        [oracle(world, n, pictures[0], QUESTIONS[0]) for n in ("chest.ct", "brain", "hand")]
    for ref in runtime.loaded():
        runtime.unload(ref)
    assert runtime.loaded() == []  # the base alone still answers, as itself
    base = ask(world, BASE, pictures[2], QUESTIONS[2])
    assert runtime.answer([base])[0].answer == oracle(world, BASE, pictures[2], QUESTIONS[2])


def test_c_memory_budget_keeps_what_fits(world):
    from safetensors import safe_open

    with safe_open(str(world.sources["chest.ct"] / "adapter_model.safetensors"), "pt") as f:
        one = sum(f.get_tensor(k).nbytes for k in f.keys())  # noqa: SIM118
    a, b = world.refs["chest.ct"], world.refs["brain"]  # the same shapes: the same bytes
    for budget, kept in ((1.5, [b]), (2.5, [a, b])):
        runtime = Runtime(world.base, world.store, memory_budget_bytes=int(one * budget))
        runtime.load(a)
        runtime.load(b)
        assert runtime.loaded() == kept


def test_d_an_adapter_of_another_base_is_refused(world, runtime, tmp_path):
    from factory import make_adapter

    from domainvlm.tiny import build_tiny_model

    other = build_tiny_model("llava", tmp_path / "other-base", seed=1)
    world.store.add(make_adapter(other, tmp_path / "other", seed=9), "other")
    before = runtime.loaded()
    with pytest.raises(BaseMismatchError) as refused:
        runtime.load("other")
    message = str(refused.value)
    assert "other@1" in message and str(other) in message and str(world.base) in message
    assert runtime.loaded() == before


def test_e_a_tampered_adapter_is_refused(world, runtime, tmp_path):
    card = world.store.add(world.sources["brain"], "tampered")
    weights = world.store.path(card.ref, verify=False) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterIntegrityError, match="adapter_model.safetensors"):
        runtime.answer([Query(images(1), "What is shown?", card.ref)])
    assert card.ref not in runtime.loaded()


def test_unknown_adapters_and_bad_queries_are_refused(world, runtime, tmp_path):
    with pytest.raises(AdapterNotFound, match="nope"):
        runtime.answer([Query(images(1), "q", "nope")])
    with pytest.raises(ValueError, match="query 2: the question is empty"):
        runtime.answer([Query(images(1), "q"), Query(images(1), "  ")])
    with pytest.raises(AdapterNotFound, match="no adapter store"):
        Runtime(world.base).answer([Query(images(1), "q", "chest.ct@1")])


def test_views_come_from_the_card(world, runtime, tmp_path):
    from domainvlm.data.views import write_views

    folder = tmp_path / "viewed"
    shutil.copytree(world.sources["hand"], folder)
    write_views(Path(folder), {"strategy": "slabs", "count": 4})
    card = world.store.add(folder, "viewed")
    assert runtime.views(card.ref) == {"strategy": "slabs", "count": 4}
    assert runtime.views(world.refs["hand"]) is None
    assert runtime.views(BASE) is None


def vision_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter on the vision tower (the factory's adapters change the LM only)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from domainvlm.base_identity import identify, write_record
    from domainvlm.train.lora import apply_lora

    model = apply_lora(AutoModelForImageTextToText.from_pretrained(str(base)), method="lora",
                       r=4, alpha=8, dropout=0.0, components=["vision"])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(str(out))
    write_record(out, identify(str(base)))
    return out


def test_an_adapter_of_the_vision_tower_runs_alone(world, runtime, pictures, tmp_path):
    """PEFT maps per-row adapter names onto the tower's rows, which are images: with two
    images in a prompt, or several questions sharing an image, rows and names disagree."""
    folder = vision_adapter(world.base, tmp_path / "eyes")
    ref = world.store.add(folder, "eyes").ref
    two = [pictures[0], pictures[1]]
    queries = [Query(two, QUESTIONS[0], ref, TOKENS), ask(world, "hand", pictures[0],
                                                          QUESTIONS[0]),
               Query(two, QUESTIONS[1], ref, TOKENS)]
    assert runtime.groups(queries) == [[0, 2], [1]]
    replies = runtime.answer(queries)
    assert [r.answer for r in replies] == [
        domainvlm.answer(str(folder), two, QUESTIONS[0], max_new_tokens=TOKENS),
        oracle(world, "hand", pictures[0], QUESTIONS[0]),
        domainvlm.answer(str(folder), two, QUESTIONS[1], max_new_tokens=TOKENS)]
