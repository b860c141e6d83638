"""The one interface of gptrain's tokenizers, :class:`Tokenizer`, and the trained one behind it.

gptrain's code calls the tiktoken ``Encoding`` of :func:`gptrain.data.tokenizer.get_tokenizer`
(``encode`` with ``allowed_special``, ``encode_ordinary``, ``decode``,
``decode_single_token_bytes``, ``n_vocab``, ``eot_token``, ``name``), with the ``sha256`` of its
table. :class:`TrainedTokenizer` gives a Hugging Face ``tokenizer.json`` written by ``gptrain
tokenizer train`` the same methods, so :func:`load_tokenizer` (a folder or ``gpt2``) and
:func:`tokenizer_from_bytes` (a checkpoint's copy) hand either to the same code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Collection, Literal, Protocol

import tiktoken
from tokenizers import Tokenizer as HFTokenizer

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import (
    END_OF_TEXT,
    GPT2_PATTERN,
    GPT4_PATTERN,
    TOKENIZER_NAME,
    bpe_parts,
    bytes_to_unicode,
    get_tokenizer,
)

TOKENIZER_FILE = "tokenizer.json"
BYTE_ALPHABET = 256  # a byte-level vocabulary holds every byte before any merge
BULK_CHARS = 1 << 16  # texts this long are worth building tiktoken's twin for (TrainedTokenizer.twin)
# After a newline between two non-spaces, GPT-2's and GPT-4's splits both start a new piece whatever
# follows, so text cut there tokenizes as the whole does (gptrain.data.prepare.split_point's rule).
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


class Tokenizer(Protocol):
    """What gptrain asks of a tokenizer: GPT-2's tiktoken encoding and :class:`TrainedTokenizer` both are one."""

    name: str
    sha256: str  # of its table: two tokenizers with the same hash give the same ids
    n_vocab: int
    eot_token: int

    def encode(self, text: str, *, allowed_special: Literal["all"] | Collection[str] = ...) -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def decode_single_token_bytes(self, token: int) -> bytes: ...


class TrainedTokenizer:
    """A byte-level BPE ``tokenizer.json`` with ``<|endoftext|>``, used like a tiktoken Encoding.

    ``data`` is the file's bytes, kept to be copied (into checkpoints, exports) unchanged, so
    that the copy has the same ``sha256``.
    """

    def __init__(self, file: Path, data: bytes, name: str):
        self.name = name
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self._tokenizer = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # the Rust parser raises plain Exception (and decode UnicodeDecodeError)
            raise GptrainError(f"{file} is not a tokenizer file ({str(exc).splitlines()[0]}): "
                               "train it again with gptrain tokenizer train") from None
        # A second copy reads <|endoftext|> in the text as plain characters, as tiktoken's
        # encode_ordinary does; Tokenizer.encode always splits out special tokens otherwise.
        self._ordinary = HFTokenizer.from_str(data.decode("utf-8"))
        self._ordinary.encode_special_tokens = True
        self.n_vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        eot = self._tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise GptrainError(f"{file} has no {END_OF_TEXT} token: train it with "
                               "gptrain tokenizer train, which adds it")
        if self.n_vocab < BYTE_ALPHABET + 1:
            raise GptrainError(f"{file} has {self.n_vocab} tokens, fewer than {BYTE_ALPHABET} bytes + "
                               f"{END_OF_TEXT}: not a byte-level BPE, train it with gptrain tokenizer train")
        self.eot_token = eot
        self.special_tokens_set = {END_OF_TEXT}
        alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
        specials = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        self._token_bytes = [
            token.encode("utf-8") if token in specials else bytes(alphabet[char] for char in token)
            for token, _ in sorted(self._tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        ]

    @functools.cached_property
    def twin(self) -> tiktoken.Encoding | None:
        """:func:`tiktoken_twin`, built on the first long text (checking it takes a second or more)."""
        return tiktoken_twin(self)

    def _fast(self, text: str) -> tiktoken.Encoding | None:
        """The twin once it is built (prepare builds it first), or for a text long enough to build it."""
        return self.twin if "twin" in self.__dict__ or len(text) >= BULK_CHARS else None

    def encode_ordinary(self, text: str) -> list[int]:
        if (fast := self._fast(text)) is not None:
            return fast.encode_ordinary(text)
        # One long string is encoded on one thread, at a quarter of tiktoken's speed; cut where the
        # split cannot change, its lines are encoded on all cores.
        lines = SAFE_CUT.split(text)
        if len(lines) == 1:
            return self._ordinary.encode(text, add_special_tokens=False).ids
        return [i for encoding in self._ordinary.encode_batch(lines, add_special_tokens=False) for i in encoding.ids]

    def encode(self, text: str, *, allowed_special: Literal["all"] | Collection[str] = frozenset()) -> list[int]:
        if allowed_special == "all" or END_OF_TEXT in allowed_special:
            if (fast := self._fast(text)) is not None:
                return fast.encode(text, allowed_special={END_OF_TEXT})
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        if END_OF_TEXT in text:
            raise GptrainError(f"the text holds {END_OF_TEXT}: allow it (allowed_special) or use encode_ordinary")
        return self.encode_ordinary(text)

    def decode(self, tokens: list[int]) -> str:
        return self._tokenizer.decode(tokens, skip_special_tokens=False)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self._token_bytes[token]

    def spec(self) -> dict:
        """The parsed ``tokenizer.json``."""
        return json.loads(self.data)

    def vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """``vocab.json``'s {token: id} (special tokens too) and the merges in rank order, in the
        byte-level spelling of :func:`gptrain.data.tokenizer.bytes_to_unicode`, as for GPT-2's."""
        merges = self.spec()["model"]["merges"]
        # tokenizers writes a merge as "a b" (before 0.20) or as the pair ["a", "b"].
        pairs = [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in merges]
        return self._tokenizer.get_vocab(with_added_tokens=True), pairs


def split_pattern(pre_tokenizer: dict) -> str | None:
    """The regex of a byte-level pre-tokenizer that ``gptrain tokenizer train`` writes (GPT-2's or GPT-4's
    split), or None for any other."""
    if pre_tokenizer.get("type") == "ByteLevel":
        plain = pre_tokenizer.get("use_regex") and not pre_tokenizer.get("add_prefix_space")
        return GPT2_PATTERN if plain else None
    steps = pre_tokenizer.get("pretokenizers") or []
    if (pre_tokenizer.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and (steps[0].get("pattern") or {}).get("Regex") == GPT4_PATTERN
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex")
            and not steps[1].get("add_prefix_space")):
        return GPT4_PATTERN
    return None


def tiktoken_twin(tokenizer: TrainedTokenizer) -> tiktoken.Encoding | None:
    """tiktoken's encoder over ``tokenizer``'s table (3-5x faster than the tokenizers library on one
    core), when it gives the ids ``tokenizer.json`` gives; None when that is not certain.

    tiktoken merges the adjacent pair whose concatenation has the lowest id; tokenizer.json applies
    its list of merges, first listed first. They agree when the text is split alike, ids grow with
    the merges' order, and each merge is the last step of tiktoken's own merging of its token's
    bytes, which is what BPE training writes (GPT-2's table passes the same test).
    """
    spec = tokenizer.spec()
    model = spec.get("model") or {}
    pattern = split_pattern(spec.get("pre_tokenizer") or {})
    if (pattern is None or spec.get("normalizer") is not None or model.get("type") != "BPE"
            or model.get("dropout") is not None or model.get("ignore_merges") or model.get("byte_fallback")
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")):
        return None
    ranks = {token: rank for rank, token in enumerate(tokenizer._token_bytes) if rank != tokenizer.eot_token}
    if len(ranks) != tokenizer.n_vocab - 1:
        return None  # two ids for the same bytes
    alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
    spell = lambda token: bytes(alphabet[char] for char in token)
    previous = -1
    for first, second in tokenizer.vocab_and_merges()[1]:
        parts = [spell(first), spell(second)]
        rank = ranks.get(parts[0] + parts[1], -1)
        if rank <= previous or bpe_parts(parts[0] + parts[1], ranks, rank) != parts:
            return None
        previous = rank
    return tiktoken.Encoding(name=tokenizer.name, pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: tokenizer.eot_token}, explicit_n_vocab=tokenizer.n_vocab)


def tokenizer_identity(tokenizer: Tokenizer) -> dict[str, str]:
    """What shards and checkpoints record to tell tokenizers apart: a name and the hash of its table."""
    return {"name": tokenizer.name, "sha256": tokenizer.sha256}


def same_tokenizer(a: dict | Tokenizer, b: dict | Tokenizer) -> bool:
    """Whether two tokenizers (or their recorded identities) give the same ids; a record without a
    hash was written before trained tokenizers existed, by GPT-2's."""
    sha = lambda t: t.get("sha256", get_tokenizer().sha256) if isinstance(t, dict) else t.sha256
    return sha(a) == sha(b)


def describe_tokenizer(identity: dict | Tokenizer) -> str:
    identity = identity if isinstance(identity, dict) else tokenizer_identity(identity)
    return f"{identity.get('name', '?')} (sha256 {str(identity.get('sha256'))[:12]}…)"


def load_tokenizer(spec: str | Path = TOKENIZER_NAME) -> Tokenizer:
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
    return TrainedTokenizer(path / TOKENIZER_FILE, (path / TOKENIZER_FILE).read_bytes(), folder)


@functools.lru_cache(maxsize=8)
def tokenizer_from_bytes(data: bytes, name: str, file: Path) -> TrainedTokenizer:
    """A trained tokenizer from a copy of its ``tokenizer.json`` (``file``, named in errors), under the
    ``name`` it was recorded with."""
    return TrainedTokenizer(file, data, name)
