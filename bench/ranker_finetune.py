"""Ablation, not shipped: fine-tune MiniLM end to end as a length regressor (as the paper fine-tunes OPT-125m).

Trains all-MiniLM-L6-v2 plus a linear head on the standardised log output length of the
Meta-Llama-3-8B-Instruct training prompts (seed-0 80/20 split by prompt, 64-token inputs,
AdamW, batch 16) and reports held-out Kendall tau after each epoch. It answers one question:
does adapting the encoder close the gap to tau 0.55? (Its serving cost is the contextual
embedder's, about 13 ms CPU per prompt here, so it could not ship under the 2 ms budget anyway.)

Reproduce (about 2-3 minutes per epoch on 2 shared cores):
    .venv/bin/python bench/ranker_finetune.py --epochs 3 --out bench/results/ranker_finetune.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfleet.ranker.data import load_examples, split_by_prompt  # noqa: E402
from llmfleet.ranker.metrics import kendall_tau  # noqa: E402
from llmfleet.ranker.text import CLS_ID, SEP_ID, _torch_model, count_tokens, token_ids  # noqa: E402

DATA = Path(os.environ.get("LLMFLEET_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpaca_eval"


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/ranker_finetune.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    examples = load_examples([DATA / "Meta-Llama-3-8B-Instruct" / "model_outputs.json"], count_tokens)
    train, held = split_by_prompt(examples, 0.2, args.seed)

    def encode(batch, max_tokens: int = 64):
        clipped = [[CLS_ID, *ids[: max_tokens - 2], SEP_ID] for ids in token_ids([e.prompt for e in batch])]
        width = max(len(c) for c in clipped)
        x = torch.zeros(len(clipped), width, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, c in enumerate(clipped):
            x[i, : len(c)] = torch.tensor(c)
            mask[i, : len(c)] = 1
        return x, mask

    logs = np.log1p([e.output_tokens for e in train])
    mu, sd = logs.mean(), logs.std()
    model = _torch_model()
    model.train()
    head = torch.nn.Linear(384, 1)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.01)

    def forward(x, mask):
        hidden = model(input_ids=x, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        return head((hidden * m).sum(1) / m.sum(1)).squeeze(-1)

    def held_tau() -> float:
        model.eval()
        with torch.inference_mode():
            scores = np.concatenate([forward(*encode(held[s : s + 64])).numpy() for s in range(0, len(held), 64)])
        model.train()
        return kendall_tau(scores, [e.output_tokens for e in held])

    rng = np.random.default_rng(args.seed)
    started = time.time()
    epochs = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(train))
        for s in range(0, len(train), 16):
            batch = [train[i] for i in order[s : s + 16]]
            y = torch.tensor((np.log1p([e.output_tokens for e in batch]) - mu) / sd, dtype=torch.float32)
            loss = torch.nn.functional.mse_loss(forward(*encode(batch)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs.append({"epoch": epoch + 1, "kendall_tau": held_tau(), "elapsed_s": time.time() - started})
        print(epochs[-1], flush=True)
    report = {"held_out_prompts": len(held), "train_prompts": len(train), "lr": args.lr, "epochs": epochs,
              "command": "python bench/ranker_finetune.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
