"""Features of a prompt that predict how long the answer will be.

Two groups, both computed from the prompt text alone (never from the answer):

* cheap features: length in WordPiece tokens, characters, words, lines; question marks and
  digits; the largest number asked for ("give 10 ideas", "in 300 words"); counts of phrases
  that ask for long or short answers ("essay", "step by step", "one word", "yes or no", ...).
* a sentence embedding of the prompt (see `text.py`), which carries what the prompt is about
  and what kind of task it is, the strongest single signal of answer length.

`FeatureConfig` is saved in the artifact so serving computes exactly the training features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

LONG_AND_SHORT_CUES: tuple[str, ...] = (
    "write", "essay", "story", "poem", "article", "blog", "email", "letter", "speech", "script",
    "explain", "describe", "detail", "step by step", "steps", "guide", "how to", "how do", "plan",
    "recipe", "list", "ideas", "tips", "examples", "pros and cons", "compare", "difference",
    "code", "function", "program", "python", "table", "outline", "summar", "paragraph",
    "rewrite", "edit", "translate", "classify", "correct", "grammar", "answer", "what is", "who",
    "when", "where", "which", "how many", "how much", "name", "one word", "one sentence",
    "yes or no", "short", "brief", "concise", "single", "true or false", "rate", "choose", "?",
)
_NUMBER = re.compile(r"\b(\d{1,4})\b")
_WORDS = re.compile(r"\S+")


@dataclass(frozen=True)
class FeatureConfig:
    """Everything needed to recompute features exactly as at training time."""

    cues: tuple[str, ...] = LONG_AND_SHORT_CUES
    embedder: str = "static"  # "static" | "contextual" | "none"
    contextual_max_tokens: int = 64
    version: int = 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FeatureConfig:
        known = {k: data[k] for k in ("embedder", "contextual_max_tokens", "version") if k in data}
        return cls(cues=tuple(data.get("cues", LONG_AND_SHORT_CUES)), **known)

    def cheap_names(self) -> list[str]:
        base = ["wp_tokens", "log_wp_tokens", "chars", "words", "lines", "digits", "max_number"]
        return base + [f"cue:{c}" for c in self.cues]


def cheap_features(prompts: Sequence[str], ids: Sequence[Sequence[int]], config: FeatureConfig) -> np.ndarray:
    rows = np.zeros((len(prompts), 7 + len(config.cues)), dtype=np.float32)
    for i, (text, seq) in enumerate(zip(prompts, ids, strict=True)):
        lower = text.lower()
        numbers = [int(n) for n in _NUMBER.findall(text)]
        n_tok = len(seq)
        rows[i, 0] = n_tok
        rows[i, 1] = math.log1p(n_tok)
        rows[i, 2] = len(text)
        rows[i, 3] = len(_WORDS.findall(text))
        rows[i, 4] = text.count("\n") + 1
        rows[i, 5] = sum(ch.isdigit() for ch in text)
        rows[i, 6] = max(numbers) if numbers else 0
        for j, cue in enumerate(config.cues):
            rows[i, 7 + j] = lower.count(cue)
    return rows


def feature_names(config: FeatureConfig, embedding_dim: int) -> list[str]:
    return config.cheap_names() + [f"emb{i}" for i in range(embedding_dim)]
