"""Beam search with a length penalty: score = sum log p / (generated length) ** length_penalty."""

from __future__ import annotations

import torch

from ptft_fast.generate.config import GenerationConfig
from ptft_fast.generate.logits import ends_with_stop, repetition_penalty


def _finished(tokens: list[int], cfg: GenerationConfig) -> bool:
    return (cfg.eos_token_id is not None and tokens[-1] == cfg.eos_token_id) or ends_with_stop(
        tokens, cfg.stop_sequences
    )


def beam_search(stepper, batch: int, cfg: GenerationConfig) -> torch.Tensor:
    """Returns (B, N) best hypotheses' tokens (pad_token_id after a finished hypothesis)."""
    k = cfg.num_beams
    idx = torch.arange(batch).repeat_interleave(k)
    logits = stepper.first().float()
    stepper.reorder(idx.to(logits.device))  # (B·K) rows, beams of a batch row adjacent
    logits = logits.index_select(0, idx.to(logits.device))
    vocab = logits.shape[-1]
    scores = torch.full((batch, k), float("-inf"), device=logits.device)
    scores[:, 0] = 0.0  # all beams start identical: only the first one expands at step 0
    beams: list[list[int]] = [[] for _ in range(batch * k)]
    hyps: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(cfg.max_new_tokens):
        seen = torch.zeros(batch * k, vocab, dtype=torch.bool, device=logits.device)
        for r, toks in enumerate(beams):
            if toks:
                seen[r, toks] = True
        logp = repetition_penalty(logits, seen, cfg.repetition_penalty).log_softmax(-1)
        cand = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top_s, top_i = cand.topk(2 * k, dim=1)
        new_rows, new_tokens, new_scores, new_beams = [], [], [], []
        last = step == cfg.max_new_tokens - 1
        for b in range(batch):
            kept = 0
            for s, flat in zip(top_s[b].tolist(), top_i[b].tolist(), strict=True):
                if done[b] or kept == k:
                    break
                src, tok = b * k + flat // vocab, flat % vocab
                toks = [*beams[src], tok]
                if _finished(toks, cfg) or last:  # a hypothesis leaves the beam
                    if s > float("-inf"):
                        hyps[b].append((s / len(toks) ** cfg.length_penalty, toks))
                    continue
                new_rows.append(src)
                new_tokens.append(tok)
                new_scores.append(s)
                new_beams.append(toks)
                kept += 1
            while kept < k:  # row done: keep dummy beams so the batch stays rectangular
                new_rows.append(b * k)
                new_tokens.append(max(cfg.pad_token_id, 0))  # a valid id for the model
                new_scores.append(float("-inf"))
                new_beams.append([*beams[b * k], cfg.pad_token_id])
                kept += 1
            if not done[b] and len(hyps[b]) >= k:
                best_live = max(new_scores[-k:])
                worst = sorted(h[0] for h in hyps[b])[-k]
                # heuristic stop (as in HF's default): the best live beam, scored at its current
                # length, no longer beats the k-th best finished hypothesis
                done[b] = best_live / (step + 1) ** cfg.length_penalty <= worst
        if all(done) or last:
            break
        dev = logits.device
        stepper.reorder(torch.tensor(new_rows, device=dev))
        scores = torch.tensor(new_scores, device=dev).view(batch, k)
        beams = new_beams
        logits = stepper.step(torch.tensor(new_tokens, device=dev)).float()
    best = [max(h, key=lambda x: x[0])[1] if h else beams[b * k] for b, h in enumerate(hyps)]
    n = max(len(t) for t in best)
    out = torch.full((batch, n), cfg.pad_token_id, dtype=torch.long)
    for b, toks in enumerate(best):
        out[b, : len(toks)] = torch.tensor(toks)
    return out
