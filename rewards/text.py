"""Text helpers shared by reward functions: completion -> text, tag extraction, number parsing."""

from __future__ import annotations

import math
import re
from typing import Any

# The default answer format, one definition for the whole package (Unsloth's parameter names, as every env
# and built-in reward takes them; a group's `format:` overrides them all at once).
REASONING_START, REASONING_END = "<think>", "</think>"
SOLUTION_START, SOLUTION_END = "<answer>", "</answer>"

_NUMBER_NOISE = re.compile(r"[\s,$€£%]")


def completion_text(completion: Any) -> str:
    """Return the text of one completion, in either of TRL's two formats.

    A standard completion is a string; a conversational one is a list of messages
    (``[{"role": "assistant", "content": "..."}]``), whose contents are joined.

    >>> completion_text("hi")
    'hi'
    >>> completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}])
    'ab'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return "".join(str(message.get("content") or "") for message in completion)


def extract_answer(text: str, start: str, end: str) -> str | None:
    """Return the stripped text between the LAST ``start`` tag and the ``end`` tag after it.

    None if either tag is absent (an ``end`` before the last ``start`` does not count).

    >>> extract_answer("<a> 1 </a> then <a>2</a>", "<a>", "</a>")
    '2'
    >>> extract_answer("<a>1", "<a>", "</a>") is None
    True
    """
    i = text.rfind(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    if j < 0:
        return None
    return text[i + len(start) : j].strip()


def parse_number(s: str | None) -> float | None:
    """Parse a number as a model tends to write it; None if it is not one number.

    Accepts thousands separators, a currency sign, a percent sign (kept as-is: "12%" -> 12.0)
    and a trailing period.

    >>> [parse_number(x) for x in ["12", "-3.5", "1,234", "$12", "12%", "12.", "twelve"]]
    [12.0, -3.5, 1234.0, 12.0, 12.0, 12.0, None]
    """
    if s is None:
        return None
    cleaned = _NUMBER_NOISE.sub("", str(s)).rstrip(".")
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # "nan" and "inf" parse, but are not answers
