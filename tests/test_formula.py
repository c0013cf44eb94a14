"""Formula AST, parser and printer: round trips, dialects, properties, and clear errors on bad input."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stldec.stl import (
    Always,
    And,
    Atom,
    Eventually,
    Formula,
    Interval,
    Not,
    Or,
    STLParseError,
    Until,
    as_formulae,
    parse,
)


def random_formula(rng: random.Random, depth: int = 0) -> Formula:
    """A small independent sampler (canonical AST), so these tests do not depend on the project's generator."""
    if depth > 4 or (depth > 0 and rng.random() < 0.3):
        return Atom(rng.randrange(12), round(rng.gauss(0, 2), 4), rng.random() < 0.5)

    def interval():
        r = rng.random()
        if r < 0.15:
            return None
        a = rng.randrange(30)
        return Interval(a, None) if r < 0.35 else Interval(a, a + rng.randrange(20))

    kind = rng.randrange(6)
    child = random_formula(rng, depth + 1)
    if kind == 0:
        return Not(child)
    if kind in (1, 2):
        return (And, Or)[kind - 1](child, random_formula(rng, depth + 1))
    if kind in (3, 4):
        return (Always, Eventually)[kind - 3](child, interval())
    return Until(child, random_formula(rng, depth + 1), interval())


PUBLISHED = [
    "( x_0 <= 0.2782 until[8,22] x_0 <= 0.1995 )",
    "eventually[14,21] ( x_0 >= 1.7708 )",
    "always[8,inf] ( x_0 <= 0.288 )",
    "not ( always[10,12] ( ( x_0 >= 0.2989 or x_1 >= -0.3329 ) ) )",
    "always ( ( x_0 >= -0.0 until x_12 <= 3.0 ) )",
    "( eventually ( x_2 >= 0.0 ) and ( x_1 <= -1.1 until[6,inf] x_0 >= 0.53 ) )",
]


@pytest.mark.parametrize("text", PUBLISHED)
def test_published_strings_round_trip(text):
    assert parse(text).to_string() == text
    assert str(parse(text)) == text


def test_round_trip_thousands_of_random_formulae_both_dialects():
    rng = random.Random(0)
    for _ in range(3000):
        f = random_formula(rng)
        for dialect in ("reference", "textbook"):
            text = f.to_string(dialect=dialect)
            assert parse(text, dialect=dialect) == f
            assert hash(parse(text, dialect=dialect)) == hash(f)


def test_dialects_shift_the_right_bound_only():
    f = parse("eventually[0,5] ( x_0 >= 0.5 )")
    assert f == Eventually(Atom(0, 0.5, False), Interval(0, 4))
    assert f.to_string(dialect="textbook") == "eventually[0,4] ( x_0 >= 0.5 )"
    assert parse("eventually[0,4] ( x_0 >= 0.5 )", dialect="textbook") == f
    assert parse("always[3,inf] ( x_0 >= 0 )").interval == Interval(3, None)
    assert parse("always[3,3] ( x_0 >= 0 )", dialect="textbook").interval == Interval(3, 3)


def test_properties():
    f = parse("( always[0,10] ( x_0 >= 0.5 ) until[2,5] not ( x_3 <= 1 ) )")
    assert f.depth == 3
    assert parse("not ( x_0 >= 1 )").depth == 2 and parse("x_0 >= 1").depth == 1
    assert f.size == 5
    assert f.variables == {0, 3}
    # until: interval end + max of the children's horizons (not their sum)
    assert f.time_horizon == 4 + 9
    assert parse("eventually[4,inf] ( always[0,3] ( x_0 >= 0 ) )").time_horizon == 4 + 2
    assert parse("always ( x_0 >= 0 )").time_horizon == 0
    assert [type(n).__name__ for n in parse("( x_0 >= 1 and not ( x_1 <= 2 ) )").walk()] == [
        "Atom", "Atom", "Not", "And"]


def test_lenient_input_prints_canonically():
    assert str(parse("  not(x_0>=1)  ")) == "not ( x_0 >= 1.0 )"
    assert str(parse("( ( x_0 >= 1 ) and x_1 <= 2 )")) == "( x_0 >= 1.0 and x_1 <= 2.0 )"
    assert str(parse("always [ 0 , 5 ] ( x_0 >= 1.23456 )")) == "always[0,5] ( x_0 >= 1.2346 )"


def test_as_formulae_normalises():
    fs = as_formulae(["x_0 >= 1", parse("x_1 <= 2")])
    assert fs == [Atom(0, 1.0, False), Atom(1, 2.0, True)]
    assert as_formulae("x_0 >= 1") == [Atom(0, 1.0, False)]


@pytest.mark.parametrize(
    "text, position, expected",
    [
        ("( x_0 >= 0.5 and ", 17, "expected a formula"),
        ("always[5,5] ( x_0 >= 1 )", 6, "empty interval"),
        ("always[6,5] ( x_0 >= 1 )", 6, "empty interval"),
        ("x_0 >= ", 7, "expected a number"),
        ("x_0 ? 3", 4, "unexpected character '?'"),
        ("not ( x_0 >= 1 ) )", 17, "expected end of input"),
        ("( x_0 >= 1 xor x_1 <= 2 )", 11, "'and', 'or', 'until'"),
        ("eventually[1,] ( x_0 >= 1 )", 13, "interval end"),
        ("eventually[-1,3] ( x_0 >= 1 )", 11, "interval start"),
        ("", 0, "expected a formula"),
        ("x_0 >= 1e400", 7, "out of range"),  # would be inf, printed as text that does not parse
        ("( x_1 <= 0 or x_0 >= -1e400 )", 21, "out of range"),
        ("x_0 >= \u0663", 7, "unexpected character"),  # Arabic-Indic 3: ASCII digits only
        ("x_0 >= \uff11", 7, "unexpected character"),  # fullwidth 1
        ("x_\u0663 >= 1", 1, "unexpected character '_'"),
        ("always[\u0663,5] ( x_0 >= 1 )", 7, "unexpected character"),
    ],
)
def test_errors_name_position_and_expectation(text, position, expected):
    with pytest.raises(STLParseError) as err:
        parse(text)
    assert err.value.position == position
    assert expected in str(err.value)
    assert isinstance(err.value, ValueError)


def test_deep_nesting_is_a_parse_error_not_a_recursion_error():
    with pytest.raises(STLParseError, match="nested deeper"):
        parse("not ( " * 5000 + "x_0 >= 1" + " )" * 5000)
    with pytest.raises(STLParseError):
        parse("(" * 100_000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dialect"):
        parse("x_0 >= 1", dialect="standard")
    with pytest.raises(TypeError):
        parse(3)
    with pytest.raises(ValueError):
        Interval(5, 4)
    for c in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            Atom(0, c, True)


ALPHABET = list("x_0123456789.-+<=>() [],") + ["not ", "and ", "or ", "always", "eventually", "until", "inf", " "]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join) | st.text(max_size=40))
def test_fuzz_parser_returns_formula_or_parse_error(text):
    try:
        f = parse(text)
    except STLParseError as e:
        assert 0 <= e.position <= len(text)
    else:
        assert parse(f.to_string()) == f
