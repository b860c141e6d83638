"""GPT-2 byte-pair tokenizer, built offline from the merge table shipped inside the package."""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib import resources

import tiktoken
import torch

from gptrain.core.errors import GptrainError

TOKENIZER_NAME = "gpt2"
TABLE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
VOCAB_SIZE = 50257

# The GPT-2 pre-tokenizer split, as tiktoken writes it for r50k_base/gpt2 (possessive
# quantifiers make it faster than OpenAI's original pattern without changing any split).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's split (tiktoken's cl100k_base), in the form Hugging Face's tiktoken converter writes.
GPT4_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _table_bytes() -> bytes:
    return resources.files("gptrain").joinpath("assets", "gpt2.tiktoken").read_bytes()


def load_merge_ranks() -> dict[bytes, int]:
    """The bundled merge table as {token bytes: rank}, after checking its sha256."""
    data = _table_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TABLE_SHA256:
        raise GptrainError(
            f"the bundled GPT-2 merge table is damaged (sha256 {digest}, expected {TABLE_SHA256}): "
            "reinstall gptrain"
        )
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


class GPT2Encoding(tiktoken.Encoding):
    """tiktoken's GPT-2 encoding that also names the hash of its table, as every gptrain tokenizer does
    (see :class:`gptrain.data.trained_tokenizer.Tokenizer`)."""

    sha256 = TABLE_SHA256


@functools.cache
def get_tokenizer() -> GPT2Encoding:
    """The GPT-2 encoding (identical to ``tiktoken.get_encoding("gpt2")``), with no network access."""
    return GPT2Encoding(
        name=TOKENIZER_NAME,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_merge_ranks(),
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def encode_text(tokenizer, text: str) -> list[int]:
    """``text``'s token ids, where ``<|endoftext|>`` is the end-of-text token (not its characters)."""
    return tokenizer.encode(text, allowed_special={END_OF_TEXT})


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding) -> torch.Tensor:
    """Encode ``text`` into a LongTensor of shape (1, n); ``<|endoftext|>`` is allowed."""
    encoded = encode_text(tokenizer, text)
    return torch.tensor(encoded, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: tiktoken.Encoding) -> str:
    """Decode a tensor of shape (1, n) or (n,) back into text."""
    flat = token_ids.squeeze(0) if token_ids.dim() == 2 else token_ids
    if flat.dim() != 1:
        raise GptrainError(
            f"token_ids_to_text takes a tensor of shape (1, n) or (n,), not {tuple(token_ids.shape)}: "
            "decode one row at a time"
        )
    return tokenizer.decode(flat.tolist())


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet of ``vocab.json`` and ``merges.txt``.

    Printable Latin-1 bytes stand for themselves; the others (space, control bytes, ...) are
    shifted to code points from 256 up, so that ``" the"`` is written ``"Ġthe"``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return mapping


def bpe_parts(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """``token``'s bytes merged as tiktoken merges them (the lowest-ranked pair first), with only the
    tokens ranked below ``below``. For the token of rank r, a table made by BPE training stops at the
    two tokens whose merge made it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        pair_ranks = [ranks.get(a + b, below) for a, b in zip(parts, parts[1:])]
        i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
        if pair_ranks[i] >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


@functools.cache
def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The bundled table in Hugging Face's form: ``vocab.json``'s {token: id} and ``merges.txt``'s pairs.

    tiktoken keeps only each token's rank. The merge that made the token of rank r (r >= 256)
    is recovered by running BPE on its bytes with the merges ranked below r only: that stops
    at exactly the two tokens that merge into it. Merges are returned in rank order, as
    ``merges.txt`` lists them.
    """
    ranks = load_merge_ranks()
    alphabet = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    def last_merge(token: bytes, rank: int) -> tuple[bytes, bytes]:
        parts = bpe_parts(token, ranks, rank)
        if len(parts) != 2:
            raise GptrainError(f"the bundled GPT-2 merge table is inconsistent at rank {rank}: reinstall gptrain")
        return parts[0], parts[1]

    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab[END_OF_TEXT] = END_OF_TEXT_ID
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if rank >= 256:
            first, second = last_merge(token, rank)
            merges.append((spell(first), spell(second)))
    return vocab, merges
