"""Answer normalisation for mutual verification: two brief answers agree when their
normalised forms are equal.

Rules, applied in order to the answer's first line:
1. Multiple choice: an option letter A-J alone, in brackets, or followed by ')', '.' or ':'
   (e.g. "(B)", "B.", "Answer: b) red", "The answer is C") -> "choice:b". "A red car" is
   not option A.
2. Yes / no: a leading yes/no word (also "true"/"false", "correct"/"incorrect") -> "yes"/"no".
3. Numbers: the first number (digits with optional sign, thousands commas and decimals, or
   an English number word zero..twenty) -> "num:" + its canonical value ("3.0" == "3").
4. Otherwise: lower-cased words without punctuation and leading articles, single-spaced.
"""
from __future__ import annotations

import re

_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*", re.I)
_CHOICE = re.compile(r"^\(?([a-j])(?:\)|\.|:|$)", re.I)
_YES = {"yes": "yes", "true": "yes", "correct": "yes", "no": "no", "false": "no", "incorrect": "no"}
_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_ARTICLES = {"a", "an", "the"}


def _canonical_number(text: str) -> str:
    value = float(text.replace(",", ""))
    return str(int(value)) if value == int(value) else repr(value)


def normalize_answer(text: str) -> str:
    """Canonical form of a brief answer (see the module docstring for the rules)."""
    line = text.strip().split("\n", 1)[0].strip() if text.strip() else ""
    body = _PREFIX.sub("", line).strip()
    m = _CHOICE.match(body)
    if m:
        return "choice:" + m.group(1).lower()
    words = re.findall(r"[a-z0-9]+", body.lower())
    if words and words[0] in _YES:
        return _YES[words[0]]
    num = _NUMBER.search(body)
    if num:
        return "num:" + _canonical_number(num.group())
    for w in words:
        if w in _WORDS:
            return "num:" + str(_WORDS.index(w))
    return " ".join(w for w in words if w not in _ARTICLES)


def answers_agree(a: str, b: str) -> bool:
    na, nb = normalize_answer(a), normalize_answer(b)
    return bool(na) and na == nb


def answer_settled(text: str, finished: bool) -> bool:
    """True once more tokens can no longer change normalize_answer(text): the request stopped,
    or its first non-blank line is complete (the rules above read the first line only)."""
    return finished or "\n" in text.lstrip()


def briefs_cannot_agree(small: str, small_done: bool, large: str, large_done: bool) -> bool:
    """Early verification: both brief answers are settled and they disagree, so the small
    model may start reasoning without waiting for the rest of either brief."""
    return (answer_settled(small, small_done) and answer_settled(large, large_done)
            and not answers_agree(small, large))
