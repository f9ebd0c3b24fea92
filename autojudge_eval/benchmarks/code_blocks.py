"""The one reader of Markdown code fences in model answers: grading, mining and the report all use it.

A fence is a line whose stripped text starts with three backticks; the rest of that line, lower-cased, is
the block's tag on an opening fence. One exception: a reply that starts with code and reaches a bare fence
before any other has closed the block the prompt opened (:func:`fenced_blocks`). Mining's "is the program
complete?" (:func:`python_block_closed`) and grading's "which program is it?" (:func:`extract_code`) read the
same blocks, so they cannot disagree.
"""

from __future__ import annotations

import ast

PYTHON_TAGS = frozenset({"python", "python3", "py"})


def fenced_blocks(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """Closed fenced blocks as (tag, body), plus the body of a final block left open (a cut-off answer).

    A reply that starts with code and then has a bare fence (three backticks, no tag) before any other fence
    has continued a block the prompt opened: that fence closes the code before it (an untagged block), it
    does not open a block of the prose after it. "Starts with code" means the text before the fence parses
    as Python and holds a statement other than a lone name or constant (``Sure`` and ``42`` parse too)."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if line.strip().startswith("```")]
    blocks, tag, body, start = [], None, [], 0
    if fences and lines[fences[0]].strip() == "```" and _is_code("\n".join(lines[: fences[0]])):
        blocks.append(("", "\n".join(lines[: fences[0]])))
        start = fences[0] + 1
    for line in lines[start:]:
        stripped = line.strip()
        if not stripped.startswith("```"):
            if tag is not None:
                body.append(line)
            continue
        if tag is None:
            tag, body = stripped[3:].strip().lower(), []
        else:
            blocks.append((tag, "\n".join(body)))
            tag = None
    return blocks, ("\n".join(body) if tag is not None else None)


def _is_code(text: str) -> bool:
    """Whether ``text`` is Python with at least one statement that is not a bare name or constant."""
    if not text.strip():
        return False
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    trivial = (ast.Name, ast.Constant)
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, trivial)) for node in tree.body)


def extract_code(answer: str, *, raw_fallback: bool = False) -> str:
    """The program in a model's answer.

    The last block fenced as python (``python``/``py``/``python3``); else the longest closed fenced block;
    else, when the answer ends inside an unclosed fence, what follows that fence. With no fence at all the
    result is "" (as upstream, so prose fails cleanly), or the stripped answer with ``raw_fallback=True``.
    """
    blocks, open_tail = fenced_blocks(answer)
    python = [body for tag, body in blocks if tag in PYTHON_TAGS]
    if python:
        return python[-1]
    if blocks:
        return max((body for _, body in blocks), key=len)
    if open_tail is not None:
        return open_tail
    return answer.strip() if raw_fallback else ""


def python_block_closed(text: str) -> bool:
    """Whether ``text`` holds a closed fenced block tagged python (the answer's program is complete)."""
    if text.count("```") < 2:
        return False
    blocks, _ = fenced_blocks(text)
    return any(tag in PYTHON_TAGS for tag, _ in blocks)
