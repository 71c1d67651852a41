import pytest

from core.budget import Budget, BudgetError


@pytest.mark.parametrize("kwargs", [{"tokens": 0}, {"tokens": -3}, {"ratio": 0.0}, {"ratio": 1.5}, {"ratio": -0.1}, {}])
def test_bad_budgets_are_refused_with_a_message(kwargs):
    with pytest.raises(BudgetError, match=r"[Bb]udget"):
        Budget(**kwargs)


def test_both_forms_at_once_are_refused():
    with pytest.raises(BudgetError):
        Budget(ratio=0.5, tokens=10)


@pytest.mark.parametrize(
    ("text", "expected"), [("50%", Budget(ratio=0.5)), ("0.25", Budget(ratio=0.25)), ("256", Budget(tokens=256))]
)
def test_parse(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "150%", "-5"])
def test_parse_refuses_nonsense(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_keep_counts():
    assert Budget(ratio=0.5).keep(10) == 5
    assert Budget(ratio=0.5).keep(11) == 6
    assert Budget(ratio=0.01).keep(10) == 1
    assert Budget(tokens=4).keep(10) == 4
    assert Budget(tokens=40).keep(10) == 10
