"""How a family lays out a question and its answer as tokens.

The generation prompt comes from the processor's chat template; the text the template puts
between that prompt and the answer, and the end-of-turn token after it, are read off the
template by rendering one conversation, so that training targets are exactly what the model
must generate after the prompt at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domainvlm.errors import ModelLoadError
from domainvlm.families import Family

_PROBE_ANSWER = "domainvlm probe answer"


def user_message(question: str, n_images: int) -> dict[str, Any]:
    content = [{"type": "image"} for _ in range(n_images)]
    return {"role": "user", "content": [*content, {"type": "text", "text": question}]}


@dataclass(frozen=True)
class PromptFormat:
    """Turns (question, n_images) into prompt text and an answer into target token ids."""

    processor: Any
    family: Family
    answer_prefix: str  # text the template puts before the answer, e.g. " "
    end_of_turn_id: int  # trained after every answer so generation knows when to stop

    @classmethod
    def from_processor(cls, processor: Any, family: Family) -> PromptFormat:
        tokenizer = processor.tokenizer
        if family.prompt_style == "plain":
            return cls(processor, family, "", _require_id(tokenizer.eos_token_id, "eos"))
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError(
                f"the processor ({type(processor).__name__}) has no chat template and the "
                f"{family.name!r} family has no plain prompt layout; save a chat template with "
                "the processor (processor.chat_template = ...) or use a listed family"
            )
        messages = [user_message("What is shown?", 1)]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False)
        answer = {"role": "assistant", "content": [{"type": "text", "text": _PROBE_ANSWER}]}
        full = processor.apply_chat_template([*messages, answer], tokenize=False)
        if not full.startswith(prompt) or _PROBE_ANSWER not in full[len(prompt):]:
            raise ModelLoadError(
                "the chat template does not continue its generation prompt with the assistant's "
                "answer, so answer tokens cannot be separated from the prompt"
            )
        rest = full[len(prompt):]
        start = rest.index(_PROBE_ANSWER)
        after = tokenizer(rest[start + len(_PROBE_ANSWER):], add_special_tokens=False).input_ids
        end_id = (after[0] if after and after[0] in special_ids(tokenizer)
                  else tokenizer.eos_token_id)
        return cls(processor, family, rest[:start], _require_id(end_id, "end-of-turn"))

    def prompt(self, question: str, n_images: int) -> str:
        if self.family.prompt_style == "plain":  # the processor adds BOS and the newline;
            # its image tokens, given up front, spare it the guess it warns about
            return getattr(self.processor, "image_token", "") * n_images + question
        return self.processor.apply_chat_template(
            [user_message(question, n_images)], add_generation_prompt=True, tokenize=False
        )

    def target_ids(self, answer: str) -> list[int]:
        """Answer tokens plus the end-of-turn token: the only positions that carry loss."""
        ids = self.processor.tokenizer(self.answer_prefix + answer,
                                       add_special_tokens=False).input_ids
        return [*ids, self.end_of_turn_id]

    def processor_inputs(self, prompts: str | list[str],
                         images: list[list[Any]]) -> dict[str, Any]:
        """Keyword arguments for the processor call: one prompt or a batch, and one list of
        images per prompt. Every processor takes the images so (those that want them flat
        flatten them, with the same result), while a flat list of a batch's images is read
        by some (Idefics3, Mllama) as all the images of one prompt."""
        return {"text": prompts, "images": images}


def special_ids(tokenizer: Any) -> set[int]:
    """Every special token the tokenizer knows: the named ones (eos, pad...) and the added
    tokens flagged special without a name, as some families' turn markers are (Llama 3's
    <|eot_id|>, Gemma's <end_of_turn>)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}


def _require_id(token_id: int | None, what: str) -> int:
    if token_id is None:
        raise ModelLoadError(f"the tokenizer has no {what} token; set one before fine-tuning")
    return token_id
