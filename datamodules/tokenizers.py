"""Tokenizers for GPT language-model data.

Two tokenizers share one small interface (:class:`Tokenizer`):

* :class:`ByteTokenizer` (``"bytes"``): the UTF-8 bytes of the text, plus one end-of-text
  token. Vocabulary 257, EOT 256. Needs nothing, round-trips any Python string.
* :class:`TiktokenTokenizer` (``"gpt2"``): OpenAI's GPT-2 BPE through ``tiktoken``
  (vocabulary 50257, EOT 50256). ``tiktoken.get_encoding("gpt2")`` downloads the merge
  files on first use; offline machines pass a local ``.tiktoken`` ranks file instead
  (e.g. ``r50k_base.tiktoken``, whose ranks are GPT-2's), see :func:`gpt2_from_ranks_file`.

Use :func:`build_tokenizer` to make one by name.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import tiktoken
import tiktoken.load

TOKENIZER_NAMES = ("bytes", "gpt2")

# How the end-of-text token is written when decoded (GPT-2's special token).
EOT_TEXT = "<|endoftext|>"

# GPT-2's pre-tokenisation regex, as tiktoken writes it for its "gpt2"/"r50k_base" encodings
# (tiktoken_ext/openai_public.py; equivalent to the original GPT-2 release, but faster).
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str
    vocab_size: int
    eot_token: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; never emits the EOT token (it is plain text here)."""

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; EOT is written as ``<|endoftext|>``."""

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Vectorised :meth:`encode` for corpus preparation: one integer array per text."""


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus EOT = 256.

    Encoding uses ``surrogatepass`` so that every Python string (lone surrogates included)
    round-trips. Byte sequences that are not valid UTF-8 (e.g. model samples) decode with
    U+FFFD replacement characters; ids outside 0..256 are an error.
    """

    name = "bytes"
    vocab_size = 257
    eot_token = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", "surrogatepass"))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8", "surrogatepass"), dtype=np.uint8) for t in texts]

    def decode(self, tokens: Sequence[int]) -> str:
        segments, current = [], bytearray()
        for t in tokens:
            if t == self.eot_token:
                segments.append(bytes(current))
                current = bytearray()
            elif 0 <= t < 256:
                current.append(t)
            else:
                raise ValueError(f"token id {t} is outside the byte vocabulary (0..256)")
        segments.append(bytes(current))
        return EOT_TEXT.join(_decode_utf8(s) for s in segments)


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


class TiktokenTokenizer:
    """A ``tiktoken.Encoding`` behind the :class:`Tokenizer` interface.

    ``encode`` uses ``encode_ordinary``: a literal ``<|endoftext|>`` inside a document is
    encoded as text, never as the EOT token (which only the packer inserts).
    """

    def __init__(self, encoding: tiktoken.Encoding, name: str = "gpt2", threads: int = 8):
        self.encoding = encoding
        self.name = name
        self.threads = max(1, int(threads))
        self.vocab_size = encoding.n_vocab
        self.eot_token = encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32)
                for ids in self.encoding.encode_ordinary_batch(list(texts),
                                                               num_threads=self.threads)]

    def decode(self, tokens: Sequence[int]) -> str:
        return self.encoding.decode(list(tokens))


def gpt2_from_ranks_file(path: str | Path) -> tiktoken.Encoding:
    """GPT-2-style encoding from a local ``.tiktoken`` ranks file (no network).

    The file holds one ``<base64 token> <rank>`` line per mergeable token (the format of
    ``r50k_base.tiktoken``). The 256 single bytes must all be present; EOT gets the id after
    the last rank (50256 for GPT-2's file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiktoken_ranks_file {str(path)!r} does not exist")
    # tiktoken caches files by path; passing the content hash makes it re-read a file that
    # changed since it was cached.
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        ranks = tiktoken.load.load_tiktoken_bpe(str(path), expected_hash=sha256)
    except Exception as e:  # malformed lines: binascii/ValueError/IndexError from tiktoken
        raise ValueError(f"could not parse tiktoken_ranks_file {str(path)!r}: {e}") from e
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"tiktoken_ranks_file {str(path)!r} lacks {len(missing)} of the 256 "
                         f"single-byte tokens (e.g. byte {missing[0]})")
    return tiktoken.Encoding(name=f"gpt2-local-{sha256[:12]}", pat_str=GPT2_PATTERN,
                             mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: max(ranks.values()) + 1})


def build_tokenizer(name: str, ranks_file: str | None = None, threads: int = 8) -> Tokenizer:
    """Tokenizer by name: ``"bytes"`` or ``"gpt2"`` (optionally from a local ranks file);
    ``threads``: tiktoken's batch-encoding threads (``adamrot prepare`` gives each worker
    its share of the available cores)."""
    if name not in TOKENIZER_NAMES:
        raise ValueError(f"tokenizer must be one of {', '.join(map(repr, TOKENIZER_NAMES))}, "
                         f"got {name!r}")
    if name == "bytes":
        if ranks_file is not None:
            raise ValueError("tiktoken_ranks_file is only used with tokenizer='gpt2', "
                             "got tokenizer='bytes'")
        return ByteTokenizer()
    if ranks_file is not None:
        return TiktokenTokenizer(gpt2_from_ranks_file(ranks_file), threads=threads)
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception as e:  # typically no network and no tiktoken cache
        raise RuntimeError(
            f"could not load tiktoken's 'gpt2' encoding ({type(e).__name__}: {e}); on an offline "
            "machine pass tiktoken_ranks_file=<path to r50k_base.tiktoken>") from e
    return TiktokenTokenizer(encoding, threads=threads)
