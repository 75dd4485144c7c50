"""The checkpoint's tokenizer: plain-text encoding (user text can never produce a control token), the
special-token ids, and an incremental decoder that never splits a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

from ..errors import CheckpointError

# Control tokens of StarCoder2's training formats.
EOS = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"
REPO_NAME, FILE_SEP = "<repo_name>", "<file_sep>"
CONTROL_TOKENS = (EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE spells each byte as a printable character; this maps them back."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_TO_LATIN1 = str.maketrans({c: chr(b) for c, b in _byte_level_alphabet().items()})
_ALPHABET = frozenset(chr(c) for c in _TO_LATIN1)


def spelled_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for: its byte-level spelling decoded, or (added tokens such as
    control tokens) its own UTF-8."""
    if _ALPHABET.issuperset(token):
        return token.translate(_TO_LATIN1).encode("latin-1")
    return token.encode("utf-8")


class Tokenizer:
    """A `tokenizers` tokenizer with special-token matching turned off for text."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read the tokenizer ({e})") from None
        # Text that spells "<fim_prefix>" or "<|endoftext|>" must stay text: control tokens are added by id.
        self._tok.encode_special_tokens = True
        self.path = path
        self.special: dict[str, int] = {}
        for name in CONTROL_TOKENS:
            token_id = self._tok.token_to_id(name)
            if token_id is None:
                raise CheckpointError(
                    f"{path}: the tokenizer has no {name} token; not a StarCoder2 tokenizer"
                )
            self.special[name] = token_id

    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer:
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json in the model folder")
        return cls(path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self.special[EOS]

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a completion: end of text, a new file, or any FIM/repository control token."""
        return frozenset(self.special.values())

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; no special token can come out of it."""
        return self._tok.encode(text, add_special_tokens=False).ids if text else []

    def encode_lines(self, lines: Sequence[str]) -> list[int]:
        """Token count of each string, tokenized on its own (a fast estimate for budgeting)."""
        if not lines:
            return []
        return [len(e.ids) for e in self._tok.encode_batch(list(lines), add_special_tokens=False)]

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or ""

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def bytes_of(self, token_id: int) -> bytes:
        """The bytes one token id stands for, without building the whole table (`--show-prompt` heals
        the prompt and should not pay for 49,152 entries)."""
        return spelled_bytes(self._tok.id_to_token(token_id) or "")

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for (control tokens: their own spelling)."""
        table = [b""] * self.vocab_size
        for token, token_id in self._tok.get_vocab(with_added_tokens=True).items():
            if token_id < len(table):
                table[token_id] = spelled_bytes(token)
        return table


class Detokenizer:
    """Turns a stream of token ids into text, holding back bytes until they complete a character."""

    def __init__(self, tokenizer: Tokenizer, skip: int = 0) -> None:
        self._bytes = tokenizer.token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._skip = skip  # leading bytes already in the text (a healed token)

    def push(self, token_id: int) -> str:
        data = self._bytes[token_id]
        if self._skip:
            cut = min(self._skip, len(data))
            data, self._skip = data[cut:], self._skip - cut
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
