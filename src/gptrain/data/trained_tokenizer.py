"""A tokenizer trained by ``gptrain tokenizer train``, behind the interface gptrain uses for GPT-2's.

gptrain's code calls the tiktoken ``Encoding`` of :func:`gptrain.data.tokenizer.get_tokenizer`
(``encode`` with ``allowed_special``, ``encode_ordinary``, ``decode``,
``decode_single_token_bytes``, ``n_vocab``, ``eot_token``). :class:`TrainedTokenizer` gives a
Hugging Face ``tokenizer.json`` the same methods, so :func:`load_tokenizer` can hand either
to the same code.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Collection, Literal

import tiktoken
from tokenizers import Tokenizer

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import END_OF_TEXT, TABLE_SHA256, TOKENIZER_NAME, bytes_to_unicode, get_tokenizer

TOKENIZER_FILE = "tokenizer.json"
BYTE_ALPHABET = 256  # a byte-level vocabulary holds every byte before any merge


class TrainedTokenizer:
    """A byte-level BPE ``tokenizer.json`` with ``<|endoftext|>``, used like a tiktoken Encoding."""

    def __init__(self, folder: Path, data: bytes):
        self.name = str(folder)
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self._tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # the Rust parser raises plain Exception (and decode UnicodeDecodeError)
            raise GptrainError(f"{folder / TOKENIZER_FILE} is not a tokenizer file ({str(exc).splitlines()[0]}): "
                               "train it again with gptrain tokenizer train") from None
        # A second copy reads <|endoftext|> in the text as plain characters, as tiktoken's
        # encode_ordinary does; Tokenizer.encode always splits out special tokens otherwise.
        self._ordinary = Tokenizer.from_str(data.decode("utf-8"))
        self._ordinary.encode_special_tokens = True
        self.n_vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        eot = self._tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise GptrainError(f"{folder / TOKENIZER_FILE} has no {END_OF_TEXT} token: train it with "
                               "gptrain tokenizer train, which adds it")
        self.eot_token = eot
        self.special_tokens_set = {END_OF_TEXT}
        alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
        specials = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        self._token_bytes = [
            token.encode("utf-8") if token in specials else bytes(alphabet[char] for char in token)
            for token, _ in sorted(self._tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        ]

    def encode_ordinary(self, text: str) -> list[int]:
        return self._ordinary.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, *, allowed_special: Literal["all"] | Collection[str] = frozenset()) -> list[int]:
        if allowed_special == "all" or END_OF_TEXT in allowed_special:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        if END_OF_TEXT in text:
            raise GptrainError(f"the text holds {END_OF_TEXT}: allow it (allowed_special) or use encode_ordinary")
        return self.encode_ordinary(text)

    def decode(self, tokens: list[int]) -> str:
        return self._tokenizer.decode(tokens, skip_special_tokens=False)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self._token_bytes[token]


AnyTokenizer = tiktoken.Encoding | TrainedTokenizer


def tokenizer_identity(tokenizer: AnyTokenizer) -> dict[str, str]:
    """What a manifest records to tell tokenizers apart: a name and the hash of its table."""
    if isinstance(tokenizer, TrainedTokenizer):
        return {"name": tokenizer.name, "sha256": tokenizer.sha256}
    return {"name": TOKENIZER_NAME, "sha256": TABLE_SHA256}


def load_tokenizer(spec: str | Path = TOKENIZER_NAME) -> AnyTokenizer:
    """``"gpt2"`` for the bundled GPT-2 BPE, or a folder written by ``gptrain tokenizer train``."""
    if str(spec) == TOKENIZER_NAME:
        return get_tokenizer()
    folder = Path(spec)
    file = folder / TOKENIZER_FILE
    if not folder.is_dir():
        raise GptrainError(f"--tokenizer {spec} is neither gpt2 nor a folder: give gpt2 or a folder written by "
                           "gptrain tokenizer train")
    if not file.is_file():
        raise GptrainError(f"tokenizer folder {folder} has no {TOKENIZER_FILE}: give a folder written by "
                           "gptrain tokenizer train")
    stat = file.stat()
    # Keyed on the file's size and time, so a folder trained again is read again.
    return _load_trained(str(folder.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load_trained(folder: str, size: int, mtime_ns: int) -> TrainedTokenizer:
    path = Path(folder)
    tokenizer = TrainedTokenizer(path, (path / TOKENIZER_FILE).read_bytes())
    if tokenizer.n_vocab < BYTE_ALPHABET + 1:
        raise GptrainError(f"{path / TOKENIZER_FILE} has {tokenizer.n_vocab} tokens, fewer than {BYTE_ALPHABET} "
                           f"bytes + {END_OF_TEXT}: not a byte-level BPE, train it with gptrain tokenizer train")
    return tokenizer
