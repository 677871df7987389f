"""Training and evaluation data for the ranker: (prompt, output length) pairs.

Two input formats are accepted, detected from the first non-blank byte of each file:

* alpaca_eval `model_outputs.json`: a JSON array of {"instruction", "output", "generator", ...};
  the output text is counted in tokens of the ranker's stated tokenizer (see `text.py`).
* JSONL, one {"prompt": str, "output_tokens": int} per line; "generator" is optional, and
  "output" (text) may stand in for "output_tokens".

Bad input raises `RankerDataError` naming the file and the row, never a bare traceback.
Splits are by prompt (a hash of the normalised prompt text), never by row, so the same
prompt answered by several generating models always falls on the same side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_BAD_ROWS_SHOWN = 5


class RankerDataError(ValueError):
    """Training or evaluation data that cannot be used, with a message that says where and why."""


@dataclass(frozen=True)
class Example:
    """One prompt and the length of one model's answer to it."""

    prompt: str
    output_tokens: int
    generator: str  # the model that wrote the output; the file's folder name when the data omits it
    # The answer itself, when the data has it: the remaining-length model learns from its prefixes.
    output: str | None = field(default=None, compare=False, repr=False)

    @property
    def prompt_key(self) -> str:
        return prompt_key(self.prompt)


def prompt_key(prompt: str) -> str:
    """A stable id for a prompt, the unit of every train/test split."""
    return hashlib.sha256(prompt.strip().encode("utf-8")).hexdigest()[:16]


def is_holdout(key: str, fraction: float, seed: int) -> bool:
    """Deterministic prompt-level split: the same prompt is held out in every file and every run."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RankerDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RankerDataError(f"{path}: is a directory; pass model_outputs.json or a .jsonl file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RankerDataError(
            f"{path}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}); "
            "ranker data must be UTF-8 JSON or JSONL"
        ) from None


def _check_prompt(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise RankerDataError(f"{where}: the prompt must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RankerDataError(f"{where}: the prompt is empty")
    return value


def _alpaca_rows(path: Path, text: str) -> Iterable[tuple[str, dict]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RankerDataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise RankerDataError(f"{path}: expected a JSON array of alpaca_eval outputs")
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _jsonl_rows(path: Path, text: str) -> Iterable[tuple[str, dict]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise RankerDataError(f"{where}: not valid JSON ({exc.msg})") from None


def load_examples(
    paths: Sequence[str | Path],
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    skip_invalid: bool = False,
) -> list[Example]:
    """Read every file in `paths` into examples.

    `count_tokens` turns output texts into token counts; it is needed only for rows that carry
    text rather than `output_tokens` (all alpaca_eval rows). With `skip_invalid`, bad rows are
    dropped and counted in the error-free result; otherwise the first bad rows raise.
    """
    if not paths:
        raise RankerDataError("no data files given")
    examples: list[Example] = []
    for path_like in paths:
        path = Path(path_like)
        text = _read_text(path)
        stripped = text.lstrip()
        if not stripped:
            raise RankerDataError(f"{path}: the file is empty")
        rows = _alpaca_rows(path, text) if stripped[0] == "[" else _jsonl_rows(path, text)
        default_generator = path.parent.name if path.name == "model_outputs.json" else path.stem
        pending_text: list[tuple[str, str, str]] = []  # (prompt, output text, generator)
        bad: list[str] = []
        for where, row in rows:
            try:
                parsed = _parse_row(row, where, default_generator)
            except RankerDataError as exc:
                bad.append(str(exc))
                continue
            prompt, tokens, output_text, generator = parsed
            if tokens is not None:
                examples.append(Example(prompt, tokens, generator))
            else:
                pending_text.append((prompt, output_text or "", generator))
        if bad and not skip_invalid:
            shown = "\n  ".join(bad[:MAX_BAD_ROWS_SHOWN])
            more = f"\n  ... and {len(bad) - MAX_BAD_ROWS_SHOWN} more" if len(bad) > MAX_BAD_ROWS_SHOWN else ""
            raise RankerDataError(f"{len(bad)} invalid row(s) in {path}:\n  {shown}{more}")
        if pending_text:
            if count_tokens is None:
                raise RankerDataError(f"{path}: rows carry output text but no tokenizer was given to count it")
            counts = count_tokens([t for _, t, _ in pending_text])
            examples.extend(Example(p, n, g, t) for (p, t, g), n in zip(pending_text, counts, strict=True))
    if not examples:
        raise RankerDataError(f"no usable rows in {', '.join(str(p) for p in paths)}")
    return examples


def _parse_row(row: object, where: str, default_generator: str) -> tuple[str, int | None, str | None, str]:
    if not isinstance(row, dict):
        raise RankerDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "prompt" in row:
        prompt = _check_prompt(row["prompt"], where)
    elif "instruction" in row:
        prompt = _check_prompt(row["instruction"], where)
    else:
        raise RankerDataError(f"{where}: missing field 'prompt' (or alpaca_eval 'instruction')")
    generator = row.get("generator") or default_generator
    if not isinstance(generator, str):
        raise RankerDataError(f"{where}: 'generator' must be a string")
    if "output_tokens" in row:
        tokens = row["output_tokens"]
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise RankerDataError(f"{where}: 'output_tokens' must be a non-negative integer, got {tokens!r}")
        return prompt, tokens, None, generator
    if "output" in row:
        output = row["output"]
        if not isinstance(output, str):
            raise RankerDataError(f"{where}: 'output' must be a string, got {type(output).__name__}")
        return prompt, None, output, generator
    raise RankerDataError(f"{where}: missing field 'output_tokens' (or alpaca_eval 'output')")


def split_by_prompt(
    examples: Sequence[Example], holdout_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Train and held-out examples; no prompt is on both sides."""
    train: list[Example] = []
    held: list[Example] = []
    for ex in examples:
        (held if is_holdout(ex.prompt_key, holdout_fraction, seed) else train).append(ex)
    return train, held


def generators(examples: Iterable[Example]) -> list[str]:
    """Generating models in first-seen order."""
    seen: dict[str, None] = {}
    for ex in examples:
        seen.setdefault(ex.generator, None)
    return list(seen)
