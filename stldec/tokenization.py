"""`StlTokenizer`: a 32-token vocabulary for STL formulae, without space tokens.

Text is split by one compiled regex into keywords, brackets, interval punctuation, comparisons, `x_`, single digits,
`-` and `.`: numbers are spelled digit by digit (`-1.25` -> `- 1 . 2 5`), variables are `x_` + digits (`x_12` ->
`x_ 1 2`), intervals are separate tokens (`always[0,10]` -> `always [ 0 , 1 0 ]`). Whitespace only separates and is
never a token, so tokenisation does not depend on the input spacing. `decode` prints the canonical published spacing
(single spaces between tokens, none inside numbers, variables and intervals, the interval glued to its keyword), so
`decode(encode(s), skip_special_tokens=True) == s` for every canonically printed formula:

    >>> tok = StlTokenizer()
    >>> tok.tokenize("always[0,10] ( x_0 >= -0.5 )")
    ['always', '[', '0', ',', '1', '0', ']', '(', 'x_', '0', '>=', '-', '0', '.', '5', ')']

A character that fits no token raises a `ValueError` naming it and its 0-based position; text never maps to
`<unk>` (the id exists because HF's API needs one, e.g. for `convert_tokens_to_ids` of a foreign token string).
Special tokens written in the text (`<mask>`, `<s>`, ...) are recognised as such, as in every HF tokenizer.
The ids are fixed (see `VOCAB`); `add_special_tokens=True` (the default) wraps a sequence as `<s> ... </s>`.

Self-contained (stdlib + transformers only): it is copied next to saved models and loaded with `trust_remote_code`.
"""

import json
import os
import re

from transformers import PreTrainedTokenizer

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]  # ids 0..4: pad, bos, eos, unk, mask
KEYWORDS = ["not", "and", "or", "always", "eventually", "until"]
SYMBOLS = ["(", ")", "[", "]", ",", "inf", "<=", ">=", "x_"]
DIGITS = [str(d) for d in range(10)]
VOCAB = {t: i for i, t in enumerate(SPECIAL_TOKENS + KEYWORDS + SYMBOLS + DIGITS + ["-", "."])}
VOCAB_SIZE = len(VOCAB)  # 32

# alternatives tried left to right: no token is a prefix of a later one, so this is longest match
_TOKEN = re.compile("|".join(re.escape(t) for t in KEYWORDS + SYMBOLS) + r"|[0-9.\-]")
_SCAN = re.compile(rf"(\s+)|(?:{_TOKEN.pattern})|(.)", re.DOTALL)  # slow path: locate the bad character

# decoding: tokens are joined by single spaces except around these (numbers, variables, intervals)
_NUMBER_TAIL = frozenset(DIGITS + ["."])
_NUMBER_PART = _NUMBER_TAIL | {"-"}
_GLUE_BEFORE = frozenset(["[", "]", ","])  # `always[`, `0]`, `0,`
_GLUE_AFTER = frozenset(["[", ",", "x_"])  # `[0`, `,inf`, `x_0`


class StlTokenizer(PreTrainedTokenizer):
    """Tokenizer of STL formula text: str -> ids `(T,)`; batches pad to `(B, T)` (right by default)."""

    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                 unk_token="<unk>", mask_token="<mask>", **kwargs):
        self.vocab = dict(VOCAB)
        if vocab_file is not None:  # must describe the same tokens (ids are read from it)
            with open(vocab_file, encoding="utf-8") as f:
                self.vocab = json.load(f)
            if set(self.vocab) != set(VOCAB):
                diff = sorted(set(self.vocab) ^ set(VOCAB))
                raise ValueError(f"{vocab_file} is not an StlTokenizer vocabulary: tokens {diff} differ")
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self._unk_token = str(unk_token)  # cached: HF's `self.unk_token` lookup is slow per token
        self._unk_id = self.vocab[self._unk_token]
        self._added_key, self._added_re = None, None
        kwargs.setdefault("special_tokens_pattern", "bos_eos")
        kwargs.setdefault("model_max_length", 1024)
        super().__init__(pad_token=pad_token, bos_token=bos_token, eos_token=eos_token, unk_token=unk_token,
                         mask_token=mask_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab, **self.added_tokens_encoder)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Fast path: one regex pass when the text holds no added/special token; else HF's splitting on them."""
        added = tuple(self._added_tokens_encoder)
        if self._added_key != added:  # tokens were added since the last call
            self._added_key, self._added_re = added, re.compile("|".join(re.escape(t) for t in added))
        if kwargs.get("split_special_tokens", self.split_special_tokens) or not self._added_re.search(text):
            return self._tokenize(text)
        return super().tokenize(text, **kwargs)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        tokens = _TOKEN.findall(text)
        if "".join(tokens) != "".join(text.split()):  # some non-space character matched no token
            for m in _SCAN.finditer(text):
                if m.lastindex == 2:
                    raise ValueError(f"character {m.group(2)!r} at position {m.start()} fits no STL token in {text!r}")
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self._unk_id)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return super().convert_tokens_to_ids(tokens)
        added, get, unk = self._added_tokens_encoder, self.vocab.get, self._unk_id  # one dict lookup per token
        return [added[t] if t in added else get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            return super().convert_ids_to_tokens(ids, skip_special_tokens)
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        added, get, unk = self._added_tokens_decoder, self.ids_to_tokens.get, self._unk_token
        return [added[i].content if i in added else get(i, unk) for i in map(int, ids) if i not in skip]

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, self._unk_token)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Canonical spacing: `['always', '[', '0', ',', '5', ']', '(', ...]` -> `'always[0,5] ( ...'`."""
        out, prev = [], None
        for t in tokens:
            glued = (prev is None or t in _GLUE_BEFORE or prev in _GLUE_AFTER
                     or (prev in _NUMBER_PART and t in _NUMBER_TAIL))
            out.append(t if glued else " " + t)
            prev = t
        return "".join(out)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (f"{filename_prefix}-" if filename_prefix else "") + "vocab.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.vocab, f, indent=1)  # in id order
        return (path,)
