"""In-context evaluation: k-shot prompts from a template, prediction by the likelihood of each
label's verbalizer, accuracy per k. Works with ptft_fast decoders (GPT) and encoder-decoders."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ptft_fast.finetune.readers import Example

TEMPLATE = "Text: {text}\nLabel:"
SEPARATOR = "\n\n"


def build_prompt(
    query: Example, shots: list[Example], verbalizers: dict[str, str], template: str = TEMPLATE
) -> str:
    """k demonstrations (template + " " + verbalizer) then the query's template, joined by blank lines."""
    demos = [template.format(text=s.text) + " " + verbalizers[str(s.label)] for s in shots]
    return SEPARATOR.join([*demos, template.format(text=query.text)])


@torch.no_grad()
def verbalizer_logprobs(
    model, tokenizer, prompt: str, verbalizers: list[str], max_positions: int
) -> torch.Tensor:
    """(L,) sum of log p(verbalizer tokens | prompt) per label. The prompt is cut from the left
    to fit ``max_positions`` with the longest verbalizer; a prefix LM reads it as its prefix."""
    options = [tokenizer.encode(" " + v) for v in verbalizers]
    p = tokenizer.encode(prompt)
    if getattr(model.config, "is_encoder_decoder", False):
        src = torch.tensor([p[-max_positions:]] * len(options))
        t = max(len(o) for o in options)
        labels = torch.tensor([o + [-100] * (t - len(o)) for o in options])
        start = model.config.decoder_start_token_id or 0
        dec = torch.cat([torch.full((len(options), 1), start), labels.clamp_min(0)[:, :-1]], 1)
        logits = model(src, decoder_input_ids=dec).logits.float()
        lp = logits.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
        return (lp * (labels != -100)).sum(1)
    p = p[-(max_positions - max(len(o) for o in options)) :]
    rows = [p + o for o in options]
    t = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (t - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in rows])
    extra = {}
    if getattr(model.config, "prefix_lm", False):  # the prompt is the prefix, attended bidirectionally
        extra["prefix_mask"] = torch.arange(t)[None, :].expand(len(rows), t) < len(p)
    logp = F.log_softmax(model(ids, attention_mask=mask, **extra).logits.float(), -1)
    scores = []
    for i, o in enumerate(options):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(o))  # position t predicts token t + 1
        scores.append(logp[i, pos, torch.tensor(o)].sum())
    return torch.stack(scores)


def evaluate_icl(
    model,
    tokenizer,
    demos: list[Example],
    queries: list[Example],
    labels: list[str],
    shots: list[int],
    *,
    verbalizers: dict[str, str] | None = None,
    template: str = TEMPLATE,
    seed: int = 0,
) -> dict[int, float]:
    """Accuracy per k: each query gets k demonstrations drawn (seeded) from ``demos``."""
    verbalizers = verbalizers or {c: c for c in labels}
    max_pos = getattr(model.config, "max_position_embeddings", 0) or 512
    model.eval()
    out = {}
    for k in shots:
        if k > len(demos):
            raise ValueError(f"icl: {k} shots requested but only {len(demos)} demonstration examples")
        rng = random.Random(seed + k)
        correct = 0
        for q in queries:
            prompt = build_prompt(q, rng.sample(demos, k), verbalizers, template)
            scores = verbalizer_logprobs(model, tokenizer, prompt, [verbalizers[c] for c in labels], max_pos)
            correct += labels[int(scores.argmax())] == str(q.label)
        out[k] = correct / len(queries)
    return out
