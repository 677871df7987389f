"""Remaining-length prediction: how many more tokens a request will generate, given its prompt
and the text it has generated so far.

The prompt-only ranker guesses once, at admission. Between two slices the dispatcher knows more:
the answer's first k tokens. Their structure says a lot about what is left, and bag-of-words
says little of it, so the features are structural:
- how far it got: k, characters, lines, paragraphs;
- lists: numbered items so far and the highest item number, bullets, headings, open code fences;
- promises: the largest small number in the prompt ("give 10 tips") against items already made;
- endings: closing phrases ("in conclusion", "I hope this helps") and where the last line stands;
plus, optionally, a static MiniLM embedding of the prefix's last few hundred characters.
They are joined to the prompt's own features (the prompt-only model's inputs) in one LightGBM
regression on log1p(remaining tokens), trained on real (prompt, prefix, remaining) triples: every
training answer cut after k tokens for k in `K_TRAIN`, counted in the ranker's tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Prefix lengths the training triples are cut at (a slice boundary can fall anywhere).
K_TRAIN = (1, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PREFIX_TAIL_CHARS = 600  # the prefix embedding reads the end of the text, where it is heading

_NUMBERED = re.compile(r"(?m)^\s*(\d{1,3})[.)]\s")
_BULLET = re.compile(r"(?m)^\s*[-*•]\s")
_HEADING = re.compile(r"(?m)^#+\s|^\*\*[^*\n]+\*\*:?\s*$")
_SMALL_NUMBER = re.compile(r"\b(\d{1,2})\b")
_ENDINGS = (
    "in conclusion", "overall", "in summary", "to summarize", "hope this", "i hope", "let me know",
    "remember", "ultimately", "good luck", "enjoy", "feel free",
)  # fmt: skip

PREFIX_FEATURES = [
    "k", "log_k", "chars", "newlines", "paragraphs", "numbered_items", "max_item", "bullets", "headings",
    "inside_code", "code_fences", "promised", "promised_left", "last_line_chars", "sentences", "colons",
    "endings", "endings_tail", "chars_since_newline", "questions", "digits",
]  # fmt: skip


def prefix_features(prompt: str, prefix: str, k: int) -> list[float]:
    lower = prefix.lower()
    items = [int(n) for n in _NUMBERED.findall(prefix)]
    asked = [int(n) for n in _SMALL_NUMBER.findall(prompt) if 1 < int(n) <= 50]
    promised = max(asked) if asked else 0
    last_newline = prefix.rfind("\n")
    return [
        float(k), math.log1p(k), float(len(prefix)), float(prefix.count("\n")), float(prefix.count("\n\n")),
        float(len(items)), float(max(items, default=0)), float(len(_BULLET.findall(prefix))),
        float(len(_HEADING.findall(prefix))), float(prefix.count("```") % 2), float(prefix.count("```")),
        float(promised), float(promised - max(items, default=0)), float(len(prefix.rsplit("\n", 1)[-1])),
        float(prefix.count(". ")), float(prefix.count(":")), float(sum(lower.count(e) for e in _ENDINGS)),
        float(sum(lower[-200:].count(e) for e in _ENDINGS)),
        float(len(prefix) - last_newline if last_newline >= 0 else len(prefix)),
        float(prefix.count("?")), float(sum(ch.isdigit() for ch in prefix)),
    ]  # fmt: skip


def cut_after(text: str, offsets: Sequence[tuple[int, int]], k: int) -> str:
    """The text of the first k tokens (`offsets`: each token's character span)."""
    return text[: offsets[k - 1][1]] if k > 0 else ""


@dataclass
class RemainingModel:
    """LightGBM on [prompt features, prefix features, prefix embedding] -> log1p(remaining tokens)."""

    booster: Any
    q90_log_residual: float  # added to the prediction for a p90 (from held-back training prompts)
    prefix_embedding: bool = True
    # Kendall's tau of the remaining length per k on the held-back prompts: how the estimate
    # sharpens with progress (the simulator's model of re-estimates reads it).
    tau_curve: tuple[tuple[int, float], ...] = ()
    # The prompt-only model's score as one more feature (stacking): its summary of the prompt is
    # learned with early stopping on the target model's answers and ranks better than raw features.
    prompt_score: bool = False

    def features(self, prompt_x: np.ndarray, prompts: Sequence[str], prefixes: Sequence[str], ks: Sequence[int],
                 embedder: Any, prompt_scores: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        rows = np.array([prefix_features(p, t, k) for p, t, k in zip(prompts, prefixes, ks, strict=True)], np.float32)
        parts = [prompt_x.astype(np.float32, copy=False), rows.reshape(len(prompts), len(PREFIX_FEATURES))]
        if self.prompt_score:
            if prompt_scores is None:
                raise ValueError("this remaining-length model reads the prompt-only score; pass prompt_scores")
            parts.append(np.asarray(prompt_scores, np.float32).reshape(-1, 1))
        if self.prefix_embedding and embedder is not None:
            parts.append(embedder.embed([t[-PREFIX_TAIL_CHARS:] or " " for t in prefixes]))
        return np.hstack(parts)

    def predict_log(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=float)

    def to_json(self) -> dict:
        return {"q90_log_residual": self.q90_log_residual, "prefix_embedding": self.prefix_embedding,
                "prompt_score": self.prompt_score,
                "prefix_features": PREFIX_FEATURES, "k_train": list(K_TRAIN),
                "tau_curve": [list(p) for p in self.tau_curve]}  # fmt: skip


def training_triples(outputs: Sequence[str], ks: Sequence[int] = K_TRAIN) -> tuple[list[int], list[str], list[int], list[int]]:
    """(row, prefix text, k, remaining tokens) for every answer cut after each k it outlasts."""
    from llmfleet.ranker.text import token_offsets

    rows, prefixes, kk, remaining = [], [], [], []
    for i, (text, offsets) in enumerate(zip(outputs, token_offsets(outputs), strict=True)):
        n = len(offsets)
        for k in ks:
            if n > k:
                rows.append(i)
                prefixes.append(cut_after(text, offsets, k))
                kk.append(k)
                remaining.append(n - k)
    return rows, prefixes, kk, remaining


def fit_remaining(
    prompt_x: np.ndarray, prompts: Sequence[str], outputs: Sequence[str], fold_of_row: np.ndarray, params: dict,
    embedder: Any, rounds: int = 600, prefix_embedding: bool = True, prompt_scores: np.ndarray | None = None,
) -> RemainingModel:  # fmt: skip
    """Train on every row's triples. Rows of fold 0 are held back first to measure the p90
    residual, then the model is refit on all rows."""
    import lightgbm as lgb

    rows, prefixes, ks, remaining = training_triples(outputs)
    model = RemainingModel(None, 0.0, prefix_embedding, prompt_score=prompt_scores is not None)
    idx = np.array(rows)
    scores = prompt_scores[idx] if prompt_scores is not None else None
    x = model.features(prompt_x[idx], [prompts[i] for i in rows], prefixes, ks, embedder, scores)
    y = np.log1p(np.array(remaining, float))
    held = fold_of_row[idx] == 0
    if held.any() and (~held).any():
        from llmfleet.ranker.metrics import kendall_tau

        probe = lgb.train(params, lgb.Dataset(x[~held], y[~held]), rounds)
        guess = probe.predict(x[held], num_threads=1)
        model.q90_log_residual = float(np.percentile(y[held] - guess, 90))
        at = np.array(ks)[held]
        model.tau_curve = tuple(
            (k, kendall_tau(guess[at == k], y[held][at == k])) for k in K_TRAIN if (at == k).sum() >= 10
        )
    model.booster = lgb.train(params, lgb.Dataset(x, y), rounds)
    return model
