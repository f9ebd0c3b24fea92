"""Prompts shared by the bench, draft fitting and mining (the lm-eval tasks hold their own in YAML)."""

from __future__ import annotations

GSM8K_INSTRUCTION = (
    "Solve the following math problem step by step. "
    'End your answer with a line of the form "The final answer is N", where N is a number.'
)


def gsm8k_messages(question: str) -> list[dict[str, str]]:
    """The zero-shot chat prompt of the AutoJudge paper: reason, then 'The final answer is N'."""
    return [{"role": "user", "content": f"{GSM8K_INSTRUCTION}\n\n{question.strip()}"}]


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt ready for the assistant's turn."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]
