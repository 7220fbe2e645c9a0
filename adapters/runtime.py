"""One base model in memory serving many adapters of the store, batched where PEFT can mix them.

Each adapter is loaded once, under its ref ("name@version"), beside the others on the same
base (PEFT's multi-adapter model). A batch answers each row with its own adapter or the base
(PEFT's per-row `adapter_names`), except for adapters PEFT cannot mix (DoRA, a part trained in
full such as LLaVA's projector: `AdapterCard.mixable`) and adapters that change the vision
tower (its rows are images, not prompts), which run in batches of their own. Answers go
through the prompt layout and greedy generation of `domainvlm.answer` (`PromptFormat`,
`generate_answers`), so the runtime answers what `domainvlm.answer(adapter folder, ...)` does.

Adapters past `max_loaded` or `memory_budget_bytes` are unloaded least-recently-used (never
the base); asking for one again loads it again.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.adapters.errors import AdapterError, AdapterNotFound
from domainvlm.adapters.sources import tensor_names
from domainvlm.adapters.store import BASE, AdapterCard, AdapterStore
from domainvlm.base_identity import BaseIdentity, identify, mismatch
from domainvlm.compat import peft_wrapping
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record
from domainvlm.errors import BaseMismatchError, ConfigError, DataError
from domainvlm.evaluation.generate import generate_answers
from domainvlm.loading import load_model
from domainvlm.models.parts import component_of

PEFT_BASE = "__base__"  # PEFT's adapter name for "no adapter" in `adapter_names`


@dataclass
class Query:
    """One question about one set of images (all shown with the question, in order)."""

    images: list[Any]  # PIL images
    question: str
    adapter: str = BASE  # "name@version", "name" (its latest version) or BASE
    max_new_tokens: int = 32


@dataclass
class Reply:
    answer: str
    adapter: str  # the resolved ref "name@version", or BASE
    seconds: float  # model time of the batch that answered it


class Runtime:
    """The base model with the adapters loaded on it; `answer` is safe to call from threads
    (one lock: the model runs one batch at a time)."""

    def __init__(self, base: str | Path, store: AdapterStore | None = None, *,
                 max_loaded: int | None = None, memory_budget_bytes: int | None = None,
                 device: str | None = None, dtype: str = "auto", batch_size: int = 8) -> None:
        for flag, value in (("max_loaded", max_loaded),
                            ("memory_budget_bytes", memory_budget_bytes),
                            ("batch_size", batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"`{flag}` must be at least 1, not {value}")
        self.base_source = str(base)
        self.base_identity: BaseIdentity = identify(self.base_source)
        self.store, self.max_loaded, self.budget = store, max_loaded, memory_budget_bytes
        self.batch_size = batch_size
        loaded = load_model(self.base_source, dtype=dtype, device=device)
        self._model: Any = loaded.model  # the base, or a PeftModel around it
        self._family = loaded.family
        self._fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
        self._slots: OrderedDict[str, int] = OrderedDict()  # ref -> bytes; LRU first
        self._alone: dict[str, bool] = {}  # ref -> must run in batches of its own
        self._lock = threading.RLock()

    # ---- the adapters on the base -------------------------------------------------------
    def load(self, ref: str) -> AdapterCard:
        """Load `ref` (verified by sha256; refused if trained on another base), unloading
        least-recently-used adapters beyond the limits; already loaded: marks it used."""
        with self._lock:
            card = self._card(ref)
            self._ensure([card])
            return card

    def unload(self, ref: str) -> None:
        """Unload `ref` if it is loaded (the base stays)."""
        if ref == BASE:
            raise AdapterError("the base model is always loaded; it cannot be unloaded")
        with self._lock:
            card = self._card(ref)
            if card.ref in self._slots:
                self._detach(card.ref)

    def loaded(self) -> list[str]:
        """Refs of the loaded adapters, least recently used first."""
        with self._lock:
            return list(self._slots)

    def views(self, ref: str) -> dict | None:
        """How the adapter's training images were rendered (its card's views); None for the
        base or an adapter that recorded none."""
        return None if ref == BASE else self._card(ref).views

    def _card(self, ref: str) -> AdapterCard:
        if self.store is None:
            raise AdapterNotFound(f"no adapter store is configured, so {ref!r} cannot be "
                                  f"served; only {BASE!r} (the base model) is")
        return self.store.card(ref)

    def _ensure(self, cards: list[AdapterCard]) -> None:
        """Load what `cards` needs, then unload LRU adapters (never these) past the limits."""
        for card in cards:
            if card.ref in self._slots:
                self._slots.move_to_end(card.ref)
            else:
                self._attach(card)
        keep = {card.ref for card in cards}
        while self._over_limits():
            victim = next((ref for ref in self._slots if ref not in keep), None)
            if victim is None:
                break  # what this batch needs stays, over the budget until the next load
            self._detach(victim)

    def _over_limits(self) -> bool:
        return ((self.max_loaded is not None and len(self._slots) > self.max_loaded)
                or (self.budget is not None and sum(self._slots.values()) > self.budget))

    def _attach(self, card: AdapterCard) -> None:
        from peft import PeftModel

        recorded = BaseIdentity(source=card.base.get("source", "?"),
                                model_type=card.base.get("model_type", "?"),
                                architectures=tuple(card.base.get("architectures") or ()),
                                weights=card.base.get("weights"))
        what = mismatch(recorded, self.base_identity)
        if what is not None:
            raise BaseMismatchError(
                f"adapter {card.ref} was trained on {recorded.describe()}, but this runtime's "
                f"base is {self.base_identity.describe()}: {what}; serve it on the base it was "
                "trained on, or register an adapter trained on this base")
        path, name = str(self.store.path(card.ref, verify=True)), _peft_name(card.ref)
        with peft_wrapping():
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(path, adapter_name=name)
            else:
                self._model = PeftModel.from_pretrained(self._model, path, adapter_name=name)
        self._model.eval()
        self._slots[card.ref] = sum(p.numel() * p.element_size()
                                    for key, p in self._model.named_parameters()
                                    if f".{name}." in key)

    def _detach(self, ref: str) -> None:
        del self._slots[ref]
        if self._slots:
            with warnings.catch_warnings():  # "was active, now deleted": set before each run
                warnings.simplefilter("ignore", UserWarning)
                self._model.delete_adapter(_peft_name(ref))
        else:  # the last one: back to the plain base (peft keeps no model without adapters)
            self._model = self._model.unload()

    def _runs_alone(self, card: AdapterCard) -> bool:
        """True for an adapter PEFT cannot batch with others, or that changes the vision
        tower: PEFT maps `adapter_names` to the tower's rows, which are images (several per
        prompt, or patches) rather than prompts."""
        if card.ref not in self._alone:
            self._alone[card.ref] = not card.mixable or _changes_tower(
                self.store.path(card.ref, verify=False))
        return self._alone[card.ref]

    # ---- answering ----------------------------------------------------------------------
    def groups(self, queries: list[Query]) -> list[list[int]]:
        """Indices of `queries` answered together: the base and mixable adapters in one
        group (at most `max_loaded` adapters each), every other adapter in its own; split by
        `max_new_tokens`. Within a group, input order."""
        with self._lock:
            return [rows for _, rows in self._plan(queries)[1]]

    def _plan(self, queries: list[Query]) -> tuple[list[AdapterCard | None],
                                                      list[tuple[bool, list[int]]]]:
        """The card of each query (None: the base) and the groups as (runs alone, rows)."""
        cards = [None if q.adapter == BASE else self._card(q.adapter) for q in queries]
        keyed: dict[tuple, list[int]] = {}
        for row, (query, card) in enumerate(zip(queries, cards, strict=True)):
            alone = card is not None and self._runs_alone(card)
            keyed.setdefault((alone, card.ref if alone else None, query.max_new_tokens),
                             []).append(row)
        groups: list[tuple[bool, list[int]]] = []
        for (alone, _, _), rows in keyed.items():
            if alone or self.max_loaded is None:
                groups.append((alone, rows))
                continue
            parts: list[tuple[set[str], list[int]]] = []  # adapters, rows
            for row in rows:
                ref = cards[row].ref if cards[row] else BASE
                part = next((p for p in parts if ref == BASE or ref in p[0]
                             or len(p[0]) < self.max_loaded), None)
                if part is None:
                    part = (set(), [])
                    parts.append(part)
                if ref != BASE:
                    part[0].add(ref)
                part[1].append(row)
            groups += [(False, part_rows) for _, part_rows in parts]
        return cards, groups

    def answer(self, queries: list[Query]) -> list[Reply]:
        """A reply per query, in order: loads the adapters needed, runs each group as
        batches of `batch_size`. Raises DataError for a malformed query, AdapterNotFound,
        AdapterIntegrityError or BaseMismatchError for an adapter it cannot serve."""
        for number, query in enumerate(queries, start=1):
            self._check(number, query)
        replies: list[Reply | None] = [None] * len(queries)
        with self._lock:
            cards, groups = self._plan(queries)
            for _, rows in groups:
                needed = list({cards[r].ref: cards[r] for r in rows if cards[r]}.values())
                self._ensure(needed)
                started = time.perf_counter()
                answers = self._generate([queries[r] for r in rows],
                                         [cards[r].ref if cards[r] else BASE for r in rows])
                seconds = time.perf_counter() - started
                for row, text in zip(rows, answers, strict=True):
                    replies[row] = Reply(text, cards[row].ref if cards[row] else BASE, seconds)
        return replies  # type: ignore[return-value]

    def _check(self, number: int, query: Query) -> None:
        from PIL import Image

        if not query.images or not all(isinstance(i, Image.Image) for i in query.images):
            raise DataError(f"query {number}: `images` must be a non-empty list of images")
        if len(query.images) > 1 and not self._family.multi_image:
            raise DataError(f"query {number}: {len(query.images)} images, but the "
                            f"{self._family.name} family takes one image per prompt")
        if not isinstance(query.question, str) or not query.question.strip():
            raise DataError(f"query {number}: the question is empty or not text")
        if not isinstance(query.max_new_tokens, int) or query.max_new_tokens < 1:
            raise ConfigError(f"query {number}: `max_new_tokens` must be at least 1, not "
                              f"{query.max_new_tokens!r}")

    def _generate(self, queries: list[Query], refs: list[str]) -> list[str]:
        """Greedy answers of one group: `refs` are one adapter, the base, or mixable ones.

        The vision-tower memo of `generate_answers` (keyed by pixels, for one call) stays on:
        within a call the tower is the same for every row, since an adapter that changes the
        tower runs alone, never mixed with another adapter or the base."""
        records = [Record(images=list(q.images), question=q.question.strip(), answer="",
                          source=f"query {n}") for n, q in enumerate(queries, start=1)]
        kwargs = {"batch_size": self.batch_size, "max_new_tokens": queries[0].max_new_tokens}
        adapters = {_peft_name(ref) for ref in refs if ref != BASE}
        if not adapters:
            off = (self._model.disable_adapter() if self._slots
                   else contextlib.nullcontext())
            with off:
                return generate_answers(self._model, self._fmt, records, **kwargs)
        first = next(ref for ref in refs if ref != BASE)
        self._model.set_adapter(_peft_name(first), inference_mode=True)
        if len(adapters) == 1 and BASE not in refs:
            return generate_answers(self._model, self._fmt, records, **kwargs)
        names = [PEFT_BASE if ref == BASE else _peft_name(ref) for ref in refs]
        try:
            with _untouched_parts_off(self._model, adapters):
                return generate_answers(self._model, self._fmt, records, adapter_names=names,
                                        **kwargs)
        except BaseException:
            _drop_mixed_batch_hooks(self._model)
            raise


def _changes_tower(folder: Path) -> bool:
    """Whether the adapter saved at `folder` holds weights of the vision tower."""
    return any(component_of(name) == "vision" for name in tensor_names(folder))


def _peft_name(ref: str) -> str:
    """The adapter's name inside PEFT: its ref, with '.' (which torch module names cannot
    hold, and refs may) as ':' (which refs cannot hold)."""
    return ref.replace(".", ":")


@contextlib.contextmanager
def _untouched_parts_off(model: Any, adapters: set[str]) -> Iterator[None]:
    """Switch off, for one mixed batch, the fully trained parts (PEFT's modules_to_save
    wrappers) that none of `adapters` trained: they are the base's for every row, yet peft
    refuses mixed batches through any such part that is not a single Linear/Embedding/Conv
    (LLaVA's projector), even for adapters that never trained it."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    idle = [module for module in model.modules()
            if isinstance(module, AuxiliaryTrainingWrapper) and not module.disable_adapters
            and not adapters & set(module._adapters)]
    for module in idle:
        module.enable_adapters(False)
    try:
        yield
    finally:
        for module in idle:
            module.enable_adapters(True)


def _drop_mixed_batch_hooks(model: Any) -> None:
    """peft (0.21) adds its `adapter_names` hooks around generate and removes them only when
    generate returns: after an exception they stay, and every later call would run each row
    with that failed batch's adapter names. Remove them."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if getattr(getattr(hook, "func", None), "__name__", "") == \
                    "_adapter_names_pre_forward_hook":
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
