"""vLLM's stop strings and streamed-text hold-back, as one object that a generation can be fed
slice by slice.

The dispatcher sends the engine no stop strings: a stop string may straddle two slices, and each
slice's engine sees only its own text. It checks them here, on the text as the client sees it,
with vLLM's rules (vllm/v1/engine/detokenizer.py, `BaseIncrementalDetokenizer.update`):
- no check until more than `min_tokens` tokens exist;
- the stop string that completes earliest wins, and ties go to the first in the list;
- the token that completes it is the last one kept;
- the text is cut before the string, or after it with `include_stop_str_in_output`;
- streamed text holds back the last `max(len(stop)) - 1` characters until the end, so that no
  part of a stop string ever reaches the client.
The simulated engine uses the same object, so an unsliced simulated request stops as vLLM would.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass


def check_stop_strings(text: str, new_chars: int, stop: Sequence[str], include: bool) -> tuple[str, int] | None:
    """(matched stop string, length to truncate the text to or -1), or None: vLLM's own rule."""
    if not new_chars or not stop:
        return None
    best: str | None = None
    best_index, best_end = 0, sys.maxsize
    for s in stop:
        index = text.find(s, 1 - new_chars - len(s))  # only where the new characters can be part of it
        if index != -1 and index + len(s) < best_end:
            best, best_index, best_end = s, index, index + len(s)
    if best is None:
        return None
    if include:
        return (best, -1) if best_end >= len(text) else (best, best_end)
    return best, best_index


@dataclass
class StopChecker:
    """The text of one generation so far, its stop-string state and what was streamed of it."""

    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    include_in_output: bool = False
    text: str = ""
    tokens: int = 0
    matched: str | None = None
    _sent: int = 0

    @property
    def hold_back(self) -> int:
        return max(len(s) for s in self.stop) - 1 if self.stop and not self.include_in_output else 0

    def update(self, token_texts: Sequence[str]) -> int | None:
        """Append new tokens (one text per token). If a stop string completed, return how many of
        these tokens to keep (the rest are dropped) and cut the text; otherwise return None."""
        before = self.tokens
        offsets = [len(self.text)]
        for piece in token_texts:
            self.text += piece
            offsets.append(len(self.text))
        self.tokens += len(token_texts)
        if not self.stop or self.matched is not None or self.tokens <= self.min_tokens:
            return None
        check_from = offsets[max(self.min_tokens - before, 0)]
        found = check_stop_strings(self.text, len(self.text) - check_from, self.stop, self.include_in_output)
        if found is None:
            return None
        self.matched, cut = found
        end = len(self.text) if cut == -1 else cut
        if not self.include_in_output:
            end += len(self.matched)
        keep = bisect_left(offsets, end, lo=1)
        self.tokens = before + keep
        if cut != -1:
            self.text = self.text[:cut]
        return keep

    @property
    def held(self) -> str:
        """Text known but not streamed yet (part of it may still turn out to begin a stop string)."""
        return self.text[self._sent :]

    def resume(self, tokens: int, sent: str, held: str) -> None:
        """Continue a generation whose first `tokens` tokens another checker has seen: `sent` was
        streamed, `held` was held back. Only text after them is checked for stop strings."""
        self.tokens, self.text, self._sent = tokens, sent + held, len(sent)

    def next_text(self, finished: bool) -> str:
        """Text not streamed yet, less the hold-back unless the generation has finished."""
        end = len(self.text) - (0 if finished else self.hold_back)
        if end <= self._sent:
            return ""
        out, self._sent = self.text[self._sent : end], end
        return out
