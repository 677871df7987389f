"""Build a tiny random-weight Llama model and a locally trained tokenizer.

No weights can be downloaded here, so the project makes its own model: 2 layers, hidden 256,
4 query heads, 2 KV heads, head_dim 64 (a head size vLLM's CPU attention accepts). It is
deterministic: the same seed gives byte-identical files, which tests check.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

VOCAB_SIZE = 4096
# A plain chat template of its own, so chat requests (the OpenAI front's /v1/chat/completions)
# work on the tiny model exactly as on a real one: vLLM renders messages with it.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
_SYLLABLES = (
    "ka lo mi ra ne tu sa vo pe di gra ble stor quen fin tal mon ser vic pod fle et lay "
    "tok en sched ule bat ch sli ce rank ing que ue me mo ry ca che gpu ker nel"
).split()


def _corpus(seed: int, sentences: int = 6000) -> list[str]:
    # Synthetic but word-shaped text: enough structure for BPE to learn merges, fully seeded.
    rng = random.Random(seed)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(1500)]
    lines = []
    for _ in range(sentences):
        n = rng.randint(4, 18)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        lines.append(sentence.capitalize() + rng.choice([".", ".", "?", "!", ","]) + f" {rng.randint(0, 9999)}")
    return lines


def _train_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=2048,
    )


def make_tiny_model(out_dir: str | Path, seed: int = 0, max_position_embeddings: int = 2048) -> Path:
    """Write a tiny Llama model plus tokenizer to `out_dir` and return the path."""
    # Tokenizer training is multi-threaded; one thread keeps merge order reproducible.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    (out / "llmfleet-model.json").write_text(
        json.dumps({"kind": "tiny-random-llama", "seed": seed, "vocab_size": VOCAB_SIZE}, indent=2) + "\n"
    )
    return out


def is_current(model_dir: str | Path) -> bool:
    """Whether a built tiny model has everything this version makes (the chat template came later)."""
    path = Path(model_dir)
    return (path / "config.json").exists() and (path / "chat_template.jinja").exists()


def digest(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of every file in a model folder, for determinism checks."""
    root = Path(model_dir)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
