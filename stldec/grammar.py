"""Grammar-constrained decoding: only tokens that keep the text a prefix of a valid, canonical formula.

`StlGrammar` is a pushdown automaton over tokenizer tokens that accepts exactly the canonical formula text
(`parse(t).to_string() == t`: balanced brackets, non-empty intervals `[a,b]` (b > a printed in the reference dialect)
or `[a,inf]`, thresholds with a sign, no leading zeros and <= 4 decimals, variables < `n_vars`) whose time horizon is
<= `max_horizon`. `GrammarLogitsProcessor` (a transformers `LogitsProcessor`) masks every token that cannot lead to
such a formula within the tokens left before `max_length`, so constrained outputs are valid from the first training
step, with greedy, beam search and sampling alike:

    proc = GrammarLogitsProcessor(tokenizer, max_length=128, n_vars=3, max_horizon=99)
    model.generate(input_ids=bos, formula_embedding=E, max_new_tokens=127, logits_processor=[proc])
"""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor

_DIGITS = frozenset("0123456789")
_MAX_INT_DIGITS = 3  # threshold integer part: |c| < 1000 (published data: |c| < 4)
_MAX_DECIMALS = 4  # thresholds are printed with <= 4 decimals
_NO_HORIZON = 9999  # horizon budget used when none is given: bounds interval values, never binds in practice
_DONE = ("<done>",)  # state after EOS (or after a token outside the grammar): only EOS / padding follow


def _extra_digits(p: int, lo: int, hi: int) -> int | None:
    """Fewest digits to append to the canonical integer prefix `p` to land in [lo, hi]; None if impossible."""
    if p == 0:
        return 0 if lo <= 0 <= hi else None
    k = 0
    while p * 10**k <= hi:
        if (p + 1) * 10**k - 1 >= lo:
            return k
        k += 1
    return None


def _number_need(s: str) -> int:
    """Tokens still needed to complete the canonical threshold spelled so far as `s` (e.g. '-1.2' -> 0)."""
    if s in ("", "-"):
        return 3  # '0 . 0'
    if "." not in s:
        return 2
    frac = s.split(".")[1]
    return 1 if not frac or (frac != "0" and frac[-1] == "0") else 0


class StlGrammar:
    """Canonical formula text as a pushdown automaton over token strings (the `StlTokenizer` vocabulary).

    A state is a tuple (a stack, top last) of hashable items, e.g. `(("LIT", ")"), ("F", 99))`; `advance(state,
    token)` returns the next state or None when `token` cannot continue a canonical formula, and `need(state)` is
    the exact number of tokens (EOS included) of the shortest completion. Formula items carry the horizon budget
    left on their path, so every root-to-leaf sum of interval ends stays <= `max_horizon`; an interval item carries
    the most horizon it may add (`cap`): the child's budget, or for `until` the least budget left at any atom of its
    already decoded left operand (tracked by the pending "OP" items, innermost first, and charged to the operators
    around it once its own interval is known).
    """

    def __init__(self, *, n_vars: int = 3, max_horizon: int | None = None, dialect: str = "reference",
                 eos_token: str = "</s>"):
        if n_vars < 1 or (max_horizon is not None and max_horizon < 0):
            raise ValueError(f"need n_vars >= 1 and max_horizon >= 0 (or None), got {n_vars} and {max_horizon}")
        if dialect not in ("reference", "textbook"):
            raise ValueError(f"unknown dialect {dialect!r}; expected 'reference' or 'textbook'")
        self.n_vars, self.eos = n_vars, eos_token
        self.offset = 1 if dialect == "reference" else 0  # printed end - AST end
        self.start = (("F", _NO_HORIZON if max_horizon is None else max_horizon),)

    def advance(self, state: tuple, token: str) -> tuple | None:
        if state is _DONE:
            return _DONE
        if token == self.eos:
            return _DONE if all(self._nullable(item) for item in state) else None
        while state:
            item, rest = state[-1], state[:-1]
            nxt = self._consume(item, rest, token)
            if nxt is not None or not self._nullable(item):
                return nxt
            state = rest  # a finished number / variable / absent interval: let the next item read the token
        return None

    def need(self, state: tuple) -> int:
        return 0 if state is _DONE else 1 + sum(self._item_need(item) for item in state)

    def top(self, state: tuple) -> tuple:
        """The top of the stack down to the first item that must still read a token: it alone decides which
        tokens may follow and how each changes `need` (the rest of the stack only shifts `need`)."""
        i = len(state) - 1
        while i > 0 and self._nullable(state[i]):
            i -= 1
        return state[i:]

    # -- items -------------------------------------------------------------------------------------------------
    def _nullable(self, item: tuple) -> bool:
        tag = item[0]
        return tag == "IV?" or (tag == "VAR" and item[1] is not None) or (tag == "NUM" and _number_need(item[1]) == 0)

    def _item_need(self, item: tuple) -> int:
        tag = item[0]
        if tag == "F":
            return 6  # 'x_ 0 <= 0 . 0'
        if tag in ("LIT", "CMP", "OP"):
            return 1
        if tag == "IV?":
            return 0
        if tag == "VAR":
            return 1 if item[1] is None else 0
        if tag == "NUM":
            return _number_need(item[1])
        _, phase, a, b, cap, _ = item  # "IV"
        if phase == "a":
            return 4 if a is None else 3  # [digit] ',' 'inf' ']'
        if phase == "inf" or b is None:
            return 1 if phase == "inf" else 2
        return 1 + _extra_digits(b, a + self.offset, cap + self.offset)

    @staticmethod
    def _spend(below: tuple, horizon: int) -> tuple:
        """Charge an interval's horizon to the formula it applies to (the first formula item below it)."""
        i = max(i for i, item in enumerate(below) if item[0] == "F")
        return below[:i] + (("F", below[i][1] - horizon),) + below[i + 1:]

    def _consume(self, item: tuple, rest: tuple, tok: str) -> tuple | None:
        tag = item[0]
        if tag == "F":
            budget = item[1]
            if tok == "x_":  # an atom: its budget bounds the innermost pending binary operator (see `_merge`)
                return self._merge(rest, budget) + (("NUM", ""), ("CMP",), ("VAR", None))
            if tok == "not":
                return rest + (("LIT", ")"), ("F", budget), ("LIT", "("))
            if tok in ("always", "eventually"):
                return rest + (("LIT", ")"), ("F", budget), ("LIT", "("), ("IV?", budget, False))
            if tok == "(":
                return rest + (("LIT", ")"), ("F", budget), ("OP", budget), ("F", budget))
            return None
        if tag == "LIT":
            return rest if tok == item[1] else None
        if tag == "CMP":
            return rest if tok in ("<=", ">=") else None
        if tag == "OP":  # the left operand is complete: its least atom budget also bounds the enclosing operator
            rest = self._merge(rest, item[1])
            return rest if tok in ("and", "or") else rest + (("IV?", item[1], True),) if tok == "until" else None
        if tag == "IV?":
            return rest + (("IV", "a", None, None, item[1], item[2]),) if tok == "[" else None
        if tag == "VAR":
            v = item[1]
            if tok not in _DIGITS or v == 0:
                return None
            v = int(tok) if v is None else v * 10 + int(tok)
            return rest + (("VAR", v),) if v < self.n_vars else None
        if tag == "NUM":
            s = self._number_char(item[1], tok)
            return None if s is None else rest + (("NUM", s),)
        return self._interval(item, rest, tok)

    def _interval(self, item: tuple, rest: tuple, tok: str) -> tuple | None:
        _, phase, a, b, cap, until = item
        if phase == "a":
            if tok == "," and a is not None:
                return rest + (("IV", "b", a, None, cap, until),)
            if tok in _DIGITS and a != 0:
                a = int(tok) if a is None else a * 10 + int(tok)
                return rest + (("IV", "a", a, None, cap, until),) if _extra_digits(a, 0, cap) is not None else None
            return None
        if phase == "inf":
            return self._close(rest, a, cap, until) if tok == "]" else None
        lo, hi = a + self.offset, cap + self.offset  # printed ends: AST end in [a, cap]
        if tok == "inf" and b is None:
            return rest + (("IV", "inf", a, None, cap, until),)
        if tok == "]" and b is not None and lo <= b <= hi:
            return self._close(rest, b - self.offset, cap, until)
        if tok in _DIGITS and b != 0:
            b = int(tok) if b is None else b * 10 + int(tok)
            return rest + (("IV", "b", a, b, cap, until),) if _extra_digits(b, lo, hi) is not None else None
        return None

    def _close(self, rest: tuple, horizon: int, cap: int, until: bool) -> tuple:
        """A complete interval adding `horizon`: charged to its operand; an until's also lengthens every path
        through its (already decoded) left operand, whose least atom budget was `cap`."""
        rest = self._spend(rest, horizon)
        return self._merge(rest, cap - horizon) if until else rest

    @staticmethod
    def _merge(rest: tuple, budget: int) -> tuple:
        """Bound the innermost pending binary operator ("OP", the one whose left operand is being decoded) by
        `budget`; operators further out learn it when that one is read (an until's cap is its left operand's least
        budget, so nesting an until inside another's left operand can never overrun the horizon)."""
        i = max((i for i, item in enumerate(rest) if item[0] == "OP"), default=None)
        return rest if i is None else rest[:i] + (("OP", min(rest[i][1], budget)),) + rest[i + 1:]

    @staticmethod
    def _number_char(s: str, tok: str) -> str | None:
        """`s + tok` if it is still a prefix of a canonical threshold (sign, no leading zeros, <= 4 decimals).

        Digits are recorded as '0' or '1' (non-zero): the rules only tell zero from non-zero, and this keeps the
        number of distinct states small."""
        if tok == "-":
            return "-" if s == "" else None
        if tok == ".":
            return s + "." if s not in ("", "-") and "." not in s else None
        if tok not in _DIGITS:
            return None
        if "." in s:
            frac = s.split(".")[1]
            last = len(frac) + 1 == _MAX_DECIMALS
            ok = len(frac) < _MAX_DECIMALS and not (last and tok == "0")
        else:
            digits = s.lstrip("-")
            ok = digits != "0" and len(digits) < _MAX_INT_DIGITS
        return s + ("0" if tok == "0" else "1") if ok else None


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks (-inf) every token that cannot continue a canonical formula that ends, with EOS, by `max_length`.

    Works for greedy, sampling and beam search: each row is matched to its state by its token prefix, so beam
    reordering needs no bookkeeping. Per step and row: one transition of the automaton and one cache lookup. The
    cost of each next token (tokens needed to finish if it is chosen) is `need(state) + delta[token]`, where `delta`
    depends only on the top of the stack down to its first item that must still read a token, so it is cached per
    such top. `max_length` is the total length generate() may reach, BOS prompt included; the prompt is BOS only.
    """

    def __init__(self, tokenizer, *, max_length: int, n_vars: int = 3, max_horizon: int | None = None,
                 dialect: str = "reference"):
        self.grammar = StlGrammar(n_vars=n_vars, max_horizon=max_horizon, dialect=dialect,
                                  eos_token=tokenizer.eos_token)
        self.tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.specials = {tokenizer.bos_token_id, tokenizer.pad_token_id}
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.max_length = max_length
        if max_length - 1 < self.grammar.need(self.grammar.start):
            raise ValueError(f"max_length={max_length} leaves no room for a formula (the shortest needs "
                             f"{self.grammar.need(self.grammar.start)} tokens after BOS)")
        self._deltas: dict[tuple, tuple[list[float], torch.Tensor]] = {}  # stack top -> delta as list and (V,)
        self._rows: dict[bytes, tuple] = {}  # each row's token prefix at the previous step -> state, need, delta

    def state(self, ids) -> tuple:
        """Automaton state after one row of token ids (BOS skipped); `_DONE` after EOS or a non-grammar token."""
        state = self.grammar.start
        for i in ids[1:] if len(ids) and int(ids[0]) in self.specials else ids:
            state = self._advance(state, int(i))
        return state

    def _advance(self, state: tuple, tok: int) -> tuple:
        nxt = self.grammar.advance(state, self.tokens[tok]) if tok < len(self.tokens) else None
        return _DONE if nxt is None else nxt

    def _delta(self, state: tuple) -> tuple[list[float], torch.Tensor]:
        """(V,) tokens needed to finish after each token minus tokens needed now; inf where not allowed."""
        top = state if state is _DONE else self.grammar.top(state)
        if top not in self._deltas:
            delta = [math.inf] * len(self.tokens)
            if state is _DONE:
                delta[self.eos_id] = delta[self.pad_id] = 0
            else:
                need = self.grammar.need(state)
                for t, tok in enumerate(self.tokens):
                    nxt = self.grammar.advance(state, tok)
                    if nxt is not None:
                        delta[t] = 1 + self.grammar.need(nxt) - need
            self._deltas[top] = delta, torch.tensor(delta)
        return self._deltas[top]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = input_ids.cpu().numpy()  # (B, T)
        rows, needs, deltas = {}, [], []
        for row in ids:
            parent = self._rows.get(row[:-1].tobytes())
            if parent is None:
                state = self.state(row)
                need = self.grammar.need(state)
            else:
                tok = int(row[-1])
                state, need = self._advance(parent[0], tok), parent[1] + parent[2][tok] - 1
            delta, delta_t = self._delta(state)
            rows[row.tobytes()] = state, need, delta
            needs.append(need)
            deltas.append(delta_t)
        self._rows = rows
        cost = torch.tensor(needs)[:, None] + torch.stack(deltas)  # (B, V_tokenizer) tokens to finish per choice
        allowed = cost <= self.max_length - ids.shape[1]
        if scores.shape[-1] > allowed.shape[-1]:  # model vocabulary padded beyond the tokenizer's
            allowed = torch.nn.functional.pad(allowed, (0, scores.shape[-1] - allowed.shape[-1]), value=False)
        return scores.masked_fill(~allowed.to(scores.device), -math.inf)
