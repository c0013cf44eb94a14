"""STL formulae: an immutable AST, its parser and its printer.

Seven node types (atom, not, and, or, always, eventually, until). Temporal operators carry an `Interval` of
closed integer sample offsets `[start, end]`, `end=None` meaning `[start, inf)`, or no interval at all
(`interval=None`: unbounded, "from now to the end of the trace").

Text <-> AST goes through a *dialect* (see DESIGN.md):
- "reference" (the published data): printed `[a,B]` means offsets a..B-1, so `eventually[0,5]` is AST `[0,4]`;
- "textbook": printed `[a,b]` means offsets a..b.

    >>> f = parse("eventually[0,5] ( x_0 >= 0.5 )")
    >>> f.to_string(dialect="textbook")
    'eventually[0,4] ( x_0 >= 0.5 )'

Malformed text raises `STLParseError` (a ValueError) with `.position`, the 0-based character index where the
parser was, and a message saying what it expected there. Numbers are written in ASCII digits, and a threshold must be
a finite float (`1e400` is refused: it would be inf, printed as text that does not parse).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

DIALECTS = ("reference", "textbook")
MAX_NESTING = 200  # deeper input is refused with an STLParseError instead of exhausting Python's stack


class STLParseError(ValueError):
    """A formula string could not be parsed; `.position` is the 0-based character index of the problem, `.reason`
    the message without the position (for callers that name the file and line themselves)."""

    def __init__(self, message: str, position: int, text: str = ""):
        self.position = position
        self.text = text
        self.reason = message
        where = f"\n  {text}\n  {' ' * position}^" if text and len(text) <= 200 else ""
        super().__init__(f"{message} (at position {position}){where}")


@dataclass(frozen=True, slots=True)
class Interval:
    """Closed window of integer sample offsets `[start, end]`; `end=None` is right-unbounded `[start, inf)`."""

    start: int
    end: int | None = None

    def __post_init__(self):
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise ValueError(f"empty or negative interval [{self.start}, {self.end}]")

    def to_string(self, dialect: str = "reference") -> str:
        _check_dialect(dialect)
        if self.end is None:
            return f"[{self.start},inf]"
        return f"[{self.start},{self.end + 1 if dialect == 'reference' else self.end}]"


class Formula:
    """Base class of the AST nodes. Nodes are frozen dataclasses: structural equality and hashing for free."""

    __slots__ = ()
    children: tuple[Formula, ...] = ()

    def to_string(self, *, dialect: str = "reference") -> str:
        """Canonical text in the published spacing (single spaces between tokens)."""
        _check_dialect(dialect)
        return _print(self, dialect)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_string()!r})"

    @property
    def depth(self) -> int:
        """Operators on the longest root-to-leaf path + 1 (an atom has depth 1)."""
        return 1 + max((c.depth for c in self.children), default=0)

    @property
    def size(self) -> int:
        """Number of nodes (operators and atoms)."""
        return 1 + sum(c.size for c in self.children)

    @property
    def time_horizon(self) -> int:
        """Samples after t needed to evaluate the formula at t (bounded windows add their end, `[a,inf)` adds a)."""
        h = max((c.time_horizon for c in self.children), default=0)
        interval = getattr(self, "interval", None)
        if interval is not None:
            h += interval.start if interval.end is None else interval.end
        return h

    @property
    def variables(self) -> frozenset[int]:
        """Indices of the variables the formula reads."""
        return frozenset().union(*(c.variables for c in self.children))

    def walk(self) -> Iterator[Formula]:
        """All nodes, children before parents (post-order)."""
        for c in self.children:
            yield from c.walk()
        yield self


@dataclass(frozen=True, slots=True, repr=False)
class Atom(Formula):
    """`x_var <= threshold` (lte=True) or `x_var >= threshold` (lte=False)."""

    var: int
    threshold: float
    lte: bool

    def __post_init__(self):
        if not math.isfinite(self.threshold):
            raise ValueError(f"atom threshold must be finite, got {self.threshold}")

    @property
    def variables(self) -> frozenset[int]:
        return frozenset((self.var,))


@dataclass(frozen=True, slots=True, repr=False)
class Not(Formula):
    child: Formula

    @property
    def children(self):
        return (self.child,)


@dataclass(frozen=True, slots=True, repr=False)
class And(Formula):
    left: Formula
    right: Formula

    @property
    def children(self):
        return (self.left, self.right)


@dataclass(frozen=True, slots=True, repr=False)
class Or(Formula):
    left: Formula
    right: Formula

    @property
    def children(self):
        return (self.left, self.right)


@dataclass(frozen=True, slots=True, repr=False)
class Always(Formula):
    """G: `interval=None` is unbounded (to the end of the trace)."""

    child: Formula
    interval: Interval | None = None

    @property
    def children(self):
        return (self.child,)


@dataclass(frozen=True, slots=True, repr=False)
class Eventually(Formula):
    """F: `interval=None` is unbounded (to the end of the trace)."""

    child: Formula
    interval: Interval | None = None

    @property
    def children(self):
        return (self.child,)


@dataclass(frozen=True, slots=True, repr=False)
class Until(Formula):
    """`left U_interval right`: `interval=None` is unbounded."""

    left: Formula
    right: Formula
    interval: Interval | None = None

    @property
    def children(self):
        return (self.left, self.right)


KEYWORDS = {"not": Not, "and": And, "or": Or, "always": Always, "eventually": Eventually, "until": Until}
UNARY = (Not, Always, Eventually)
BINARY = (And, Or, Until)


def format_threshold(c: float) -> str:
    """The published number format: Python's shortest repr of the value rounded to 4 decimals (`0.288`, `-0.0`)."""
    s = repr(round(float(c), 4))
    return s if "e" not in s else f"{c:.4f}".rstrip("0").rstrip(".")


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")


def _print(f: Formula, dialect: str) -> str:
    match f:
        case Atom():
            return f"x_{f.var} {'<=' if f.lte else '>='} {format_threshold(f.threshold)}"
        case Not():
            return f"not ( {_print(f.child, dialect)} )"
        case And() | Or():
            return f"( {_print(f.left, dialect)} {'and' if isinstance(f, And) else 'or'} {_print(f.right, dialect)} )"
        case Always() | Eventually():
            kw = "always" if isinstance(f, Always) else "eventually"
            iv = f.interval.to_string(dialect) if f.interval else ""
            return f"{kw}{iv} ( {_print(f.child, dialect)} )"
        case Until():
            iv = f.interval.to_string(dialect) if f.interval else ""
            return f"( {_print(f.left, dialect)} until{iv} {_print(f.right, dialect)} )"
    raise TypeError(f"not a formula node: {f!r}")


# ---------------------------------------------------------------------------------------------------------------
# parsing: a lexer with positions, then recursive descent with a nesting limit.
# Digits are ASCII only: `\d` and int() would also take other scripts' digits ('٣', '３').

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)|(?P<var>x_[0-9]+)|(?P<cmp><=|>=)"
    r"|(?P<word>[a-z]+)|(?P<sym>[()\[\],]))"
)


def _lex(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, position) triples, ending with ("end", "", len(text))."""
    tokens, pos = [], 0
    while True:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            rest = text[pos:].lstrip()
            if not rest:
                break
            at = len(text) - len(rest)
            raise STLParseError(f"unexpected character {rest[0]!r}", at, text)
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, dialect: str):
        self.text, self.dialect = text, dialect
        self.tokens = _lex(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def fail(self, expected: str):
        kind, value, pos = self.peek()
        found = "end of input" if kind == "end" else repr(value)
        raise STLParseError(f"expected {expected}, found {found}", pos, self.text)

    def take(self, value: str, expected: str | None = None) -> None:
        if self.peek()[1] != value or self.peek()[0] == "end":
            self.fail(expected or repr(value))
        self.i += 1

    def formula(self, nesting: int = 0) -> Formula:
        kind, value, pos = self.peek()
        if nesting > MAX_NESTING:
            raise STLParseError(f"formula nested deeper than {MAX_NESTING} levels", pos, self.text)
        if kind == "var":
            return self.atom()
        if kind == "word" and value in ("not", "always", "eventually"):
            self.i += 1
            interval = self.interval() if value != "not" else None
            child = self.formula(nesting + 1)
            return Not(child) if value == "not" else KEYWORDS[value](child, interval)
        if value == "(" and kind == "sym":
            self.i += 1
            left = self.formula(nesting + 1)
            kind, value, pos = self.peek()
            if value == ")":  # redundant grouping parentheses, e.g. the `( φ )` of `not ( φ )`
                self.i += 1
                return left
            if kind != "word" or value not in ("and", "or", "until"):
                self.fail("'and', 'or', 'until' or ')'")
            self.i += 1
            interval = self.interval() if value == "until" else None
            right = self.formula(nesting + 1)
            self.take(")", "')' closing the binary formula")
            return Until(left, right, interval) if value == "until" else KEYWORDS[value](left, right)
        self.fail("a formula (an atom 'x_i <= c', 'not', 'always', 'eventually' or '(')")

    def atom(self) -> Atom:
        _, var, _ = self.peek()
        self.i += 1
        kind, cmp, _ = self.peek()
        if kind != "cmp":
            self.fail("'<=' or '>='")
        self.i += 1
        kind, num, pos = self.peek()
        if kind != "num":
            self.fail("a number")
        if not math.isfinite(float(num)):
            raise STLParseError(f"threshold {num} is out of range (not a finite float)", pos, self.text)
        self.i += 1
        return Atom(int(var[2:]), float(num), cmp == "<=")

    def integer(self, expected: str) -> int:
        kind, value, _ = self.peek()
        if kind != "num" or not value.isdigit():
            self.fail(expected)
        self.i += 1
        return int(value)

    def interval(self) -> Interval | None:
        """`[a,b]` / `[a,inf]` after a temporal keyword, or nothing (unbounded)."""
        if self.peek()[1] != "[":
            return None
        pos = self.peek()[2]
        self.i += 1
        a = self.integer("a non-negative integer interval start")
        self.take(",", "',' inside the interval")
        if self.peek()[1] == "inf":
            self.i += 1
            self.take("]", "']' closing the interval")
            return Interval(a, None)
        b = self.integer("an integer interval end or 'inf'")
        self.take("]", "']' closing the interval")
        end = b - 1 if self.dialect == "reference" else b
        if end < a:
            what = f"[{a},{b}] is empty in the {self.dialect} dialect"
            need = "end > start" if self.dialect == "reference" else "end >= start"
            raise STLParseError(f"empty interval: {what} (need {need})", pos, self.text)
        return Interval(a, end)


def parse(text: str, *, dialect: str = "reference") -> Formula:
    """Parse one formula. Accepts the published syntax, bare atoms and redundant grouping parentheses."""
    _check_dialect(dialect)
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, got {type(text).__name__}")
    p = _Parser(text, dialect)
    f = p.formula()
    if p.peek()[0] != "end":
        p.fail("end of input")
    return f


def as_formulae(formulae: Formula | str | Sequence[Formula | str], dialect: str = "reference") -> list[Formula]:
    """Normalise one formula or a sequence of formulae/strings into a list of Formula."""
    if isinstance(formulae, Formula | str):
        formulae = [formulae]
    return [f if isinstance(f, Formula) else parse(f, dialect=dialect) for f in formulae]
