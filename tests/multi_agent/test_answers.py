"""Answer normalisation used by mutual verification."""
import pytest

from baton.engine.answers import answers_agree, normalize_answer


@pytest.mark.parametrize("a,b", [
    ("B", "(B)"), ("b.", "Answer: B"), ("The answer is C", "C) a red car"), ("A: cat", "a"),
    ("Yes.", "yes, it is"), ("True", "YES"), ("No", "no."),
    ("3", "3.0"), ("There are 3 apples", "three"), ("1,000", "1000"), ("-2", "-2.00"),
    ("A red car.", "red car"), ("  Blue  sky ", "blue sky!"),
])
def test_equivalent_answers_agree(a, b):
    assert answers_agree(a, b), (normalize_answer(a), normalize_answer(b))


@pytest.mark.parametrize("a,b", [
    ("A", "B"), ("yes", "no"), ("3", "4"), ("3.5", "3"), ("red car", "blue car"), ("", ""),
    ("Apple", "A"),  # a word starting with a letter option is not that option
])
def test_different_answers_disagree(a, b):
    assert not answers_agree(a, b)


def test_only_first_line_counts():
    assert normalize_answer("B\nbecause A is wrong") == "choice:b"
