"""The one code-fence parser (``benchmarks.code_blocks``) on every shape of reply in the committed samples
(results/humaneval-chat-w4, results/livecodebench-w4): no fence, one closed fence, an unclosed fence, several
fences, and a reply that starts with code and ends with a lone closing fence."""

from __future__ import annotations

import pytest

from autojudge_eval.benchmarks.code_blocks import extract_code, fenced_blocks, python_block_closed
from autojudge_eval.benchmarks.humaneval import extract_completion

CODE = "def add(a, b):\n    return a + b"
PROSE = "This function adds `a` and `b` and returns the sum."

SHAPES = {
    # HumanEval completion-style answers, and chat replies that are prose only
    "no fence": (PROSE, [], None, ""),
    # the most common chat shape
    "closed": (f"Here is the code:\n```python\n{CODE}\n```\n{PROSE}", [("python", CODE)], None, CODE),
    # cut off at max_gen_toks inside the block (146 of 293 LiveCodeBench replies)
    "unclosed": (f"Sure:\n```python\n{CODE}\n", [], f"{CODE}\n", f"{CODE}\n"),
    # a test block, then the program: the last python block wins
    "several": (
        f"```text\n3\n```\n```python\nprint(1)\n```\nor better:\n```python\n{CODE}\n```",
        [("text", "3"), ("python", "print(1)"), ("python", CODE)],
        None,
        CODE,
    ),
    # the reply continues the block the prompt opened: its one fence closes the code, the prose is not code
    # (25 of 164 committed HumanEval-chat replies)
    "lone closing fence": (
        f"{CODE}\n\n# Example usage:\nprint(add(1, 2))\n```\n\n{PROSE}",
        [("", f"{CODE}\n\n# Example usage:\nprint(add(1, 2))")],
        None,
        f"{CODE}\n\n# Example usage:\nprint(add(1, 2))",
    ),  # fmt: skip
    # the same, followed by a second, properly fenced version (HumanEval/90 in the committed samples)
    "lone closing fence, then a block": (
        f"{CODE}\n```\n\n{PROSE}\n\n```python\ndef add(a, b):\n    return b + a\n```",
        [("", CODE), ("python", "def add(a, b):\n    return b + a")],
        None,
        "def add(a, b):\n    return b + a",
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_fence_shape_in_the_committed_samples(shape):
    text, blocks, tail, program = SHAPES[shape]
    assert fenced_blocks(text) == (blocks, tail)
    assert extract_code(text) == program


def test_a_lone_closing_fence_does_not_open_a_block_of_the_prose_after_it():
    text = SHAPES["lone closing fence"][0]
    assert PROSE not in extract_code(text) and extract_completion(text).startswith(CODE)
    assert not python_block_closed(text)  # mining: the closed block is untagged, as before


@pytest.mark.parametrize(
    "text",
    [
        f"Here is the code:\n```\n{CODE}\n```",  # prose, then a bare opening fence: it opens
        f"Sure\n```\n{CODE}\n```",  # "Sure" parses as Python, but a lone name is not code
        f"42\n```\n{CODE}\n```",
    ],
)
def test_a_bare_fence_after_prose_still_opens(text):
    assert fenced_blocks(text) == ([("", CODE)], None) and extract_code(text) == CODE


def test_a_reply_that_starts_with_the_fence_is_read_as_before():
    """Nothing before the fence: no code to close; the fence opens (prose after it, graded as upstream)."""
    assert fenced_blocks(f"```\n\n{PROSE}") == ([], f"\n{PROSE}")


def test_no_fence_falls_back_to_the_raw_answer_only_when_asked():
    assert extract_code("  print(3)\n", raw_fallback=True) == "print(3)"
    assert extract_completion("    return a + b\n") == "    return a + b\n"  # completion style: as generated
