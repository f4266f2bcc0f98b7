"""How the multi-agent stages phrase their prompts, built in token space so that every later
stage of a model starts with the exact tokens of its earlier stage (prefix-cache reuse).

    brief     = chat(messages + brief_instruction)                      -> short answer
    reason    = chat(messages + reason_instruction) + think_open        -> reasoning
    reasoned  = reason + reasoning + think_close                        -> short answer
    transfer  = brief(large) + think_open + transfer_preamble + selected reasoning + think_close
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from baton.errors import InvalidRequestError


@dataclass
class AgentPrompts:
    brief_instruction: str = "Answer with a single word, number or option letter."
    reason_instruction: str = "Think step by step about the image and the question, then answer."
    think_open: str = "<think>\n"
    think_close: str = "\n</think>\n\n"
    transfer_preamble: str = ""


def with_instruction(messages, instruction: str) -> list[dict]:
    """A copy of `messages` whose last user turn ends with `instruction`."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequestError("messages must be a non-empty list of message dicts")
    msgs = copy.copy(messages)
    last = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i].get("role") == "user"), None)
    if last is None:
        raise InvalidRequestError("messages need at least one 'user' turn")
    msg = dict(msgs[last])
    content = msg.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    elif not isinstance(content, list):
        raise InvalidRequestError("a user message's content must be a string or a list of parts")
    if instruction:
        content = list(content) + [{"type": "text", "text": " " + instruction}]
    msg["content"] = content
    msgs[last] = msg
    return msgs


class PromptBuilder:
    """Token-level prompts for one model (its own tokenizer and chat template)."""

    def __init__(self, processor, prompts: AgentPrompts):
        self.processor = processor
        self.prompts = prompts

    def clean(self, ids: list[int]) -> list[int]:
        """Generated ids without vision placeholders: a model may emit them, but in a later
        prompt they would claim image positions that have no image."""
        p = self.processor
        vision = {p.image_token_id, p.video_token_id, p.vision_start_token_id, p.vision_end_token_id}
        return [t for t in ids if t not in vision]

    def encode_text(self, text: str) -> list[int]:
        return self.processor.tokenizer.encode(text, add_special_tokens=False)

    def chat_ids(self, messages, instruction: str) -> tuple[list[int], list]:
        text, images = self.processor.render_chat(with_instruction(messages, instruction))
        return list(self.processor.process(text, images).token_ids), images

    def brief(self, messages):
        return self.chat_ids(messages, self.prompts.brief_instruction)

    def reason(self, messages):
        ids, images = self.chat_ids(messages, self.prompts.reason_instruction)
        return ids + self.encode_text(self.prompts.think_open), images

    def after_reasoning(self, prefix_ids: list[int], reasoning_ids: list[int]) -> list[int]:
        return prefix_ids + list(reasoning_ids) + self.encode_text(self.prompts.think_close)

    def transfer_head(self, brief_ids: list[int]) -> list[int]:
        """What a transfer prompt starts with, known before any reasoning exists (prefill-ahead)."""
        return brief_ids + self.encode_text(self.prompts.think_open + self.prompts.transfer_preamble)

    def transfer(self, brief_ids: list[int], selected_ids: list[int]) -> list[int]:
        return self.transfer_head(brief_ids) + list(selected_ids) + self.encode_text(self.prompts.think_close)
