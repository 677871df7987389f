"""Text of generated tokens exactly as one unsliced vLLM request streams it, slice after slice.

vLLM turns tokens into text incrementally (a `tokenizers` DecodeStream primed with the prompt).
Text is held back while it ends in an incomplete character, because a byte-level token can carry
half of a multi-byte character. A slice that starts from `prompt + generated` cannot ask vLLM for
that: vLLM primes its stream with everything it is given, half characters included, and its text
then goes wrong. Measured on the tiny model at S = 1: the prompt's own text came back in the
middle of the output.

So the sidecar detokenizes itself, the way vLLM's unsliced request does. It primes a DecodeStream
with the context up to the last token whose text was emitted, then steps through the `pending`
tokens that were still held back when the previous slice ended. The dispatcher carries `pending`
from slice to slice. The tokenizer is the model's own fast tokenizer (`tokenizers.Tokenizer`),
decoding with vLLM's defaults: special tokens skipped, no clean-up of spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


@dataclass
class TextStream:
    """One slice's incremental detokenizer; `pending` counts tokens whose text is held back."""

    tokenizer: Tokenizer
    pending: int = 0
    _stream: Any = field(default=None, repr=False)

    @classmethod
    def resume(cls, tokenizer: Tokenizer, context_ids: Sequence[int], pending: int = 0) -> TextStream:
        """Continue after `context_ids` (prompt + generated), of which the last `pending` tokens'
        text has not been emitted yet (0 for a request's first slice)."""
        pending = max(0, min(pending, len(context_ids) - 1))
        settled = list(context_ids[: len(context_ids) - pending])
        ts = cls(tokenizer, 0, DecodeStream(ids=settled, skip_special_tokens=True))
        for token in context_ids[len(settled) :]:
            ts.step(token)  # held back last time; stays held back until a later token completes it
        return ts

    def step(self, token_id: int) -> str:
        """The text this token adds ("" while it ends in an incomplete character)."""
        text: str | None = self._stream.step(self.tokenizer, int(token_id))
        if text is None:
            self.pending += 1
            return ""
        self.pending = 0
        return text


def load_tokenizer(source: str | Path) -> Tokenizer:
    """The fast tokenizer of a model folder or Hugging Face id (read from the local cache)."""
    path = Path(source)
    if (path / "tokenizer.json").exists():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    backend = getattr(tok, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(f"{source}: slicing needs a fast (tokenizers) tokenizer, got {type(tok).__name__}")
    return backend
