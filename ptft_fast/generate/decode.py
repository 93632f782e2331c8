"""generate(): greedy / sampling / beam search over a ptft_fast decoder or encoder-decoder."""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast.generate.beam import beam_search
from ptft_fast.generate.config import GenerationConfig
from ptft_fast.generate.logits import ends_with_stop, next_token, repetition_penalty
from ptft_fast.generate.steppers import DecoderStepper, make_stepper


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → input_ids (B, T) left-padded with pad_id, attention_mask (B, T)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad: every prompt needs at least one token")
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s) :] = torch.tensor(s)
        mask[i, t - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    use_cache: bool = True,
    streamer=None,
) -> torch.Tensor:
    """Generate up to ``config.max_new_tokens`` tokens per row.

    ``model``: a ptft_fast decoder or encoder-decoder, or one wrapped by ``ptft_fast.peft`` prefix
    or prompt tuning (the wrappers forward ``config`` and ``encode``).

    Args:
        input_ids: (B, T) prompts, left-padded for decoders (either side for encoder-decoders);
            attention_mask: (B, T), 1 = token. A prompt's tokens get the same positions as alone.
        use_cache: reuse keys/values of earlier positions (False re-runs the whole sequence).
        streamer: object with ``put(tokens: (B,) tensor)`` and ``end()`` (e.g. TextStreamer).

    Returns:
        (B, N) new tokens, N <= max_new_tokens; rows that finished early (eos / stop sequence)
        are filled with pad_token_id after their last token.
    """
    cfg = config or GenerationConfig()
    cfg.validate()
    if input_ids.dim() != 2:
        raise ValueError(f"generate: input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    was_training = model.training
    model.eval()
    try:
        stepper = make_stepper(model, input_ids, attention_mask, use_cache)
        if cfg.num_beams > 1:
            return beam_search(stepper, input_ids.shape[0], cfg)
        return _sample(stepper, input_ids, attention_mask, cfg, streamer)
    finally:
        model.train(was_training)


def _sample(stepper, input_ids, attention_mask, cfg: GenerationConfig, streamer) -> torch.Tensor:
    b = input_ids.shape[0]
    gen = torch.Generator(device=input_ids.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    logits = stepper.first().float()
    vocab = logits.shape[-1]
    seen = torch.zeros(b, vocab, dtype=torch.bool, device=input_ids.device)
    if isinstance(stepper, DecoderStepper):  # decoder: the prompt counts as seen
        valid = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        seen.scatter_(1, input_ids.masked_fill(~valid, 0), valid)
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    rows: list[list[int]] = [[] for _ in range(b)]
    out = []
    for i in range(cfg.max_new_tokens):
        logits = repetition_penalty(logits, seen, cfg.repetition_penalty)
        raw = next_token(logits, cfg, gen)  # finished rows still feed a valid id to the model
        tok = raw.masked_fill(done, cfg.pad_token_id)
        out.append(tok)
        if streamer is not None:
            streamer.put(tok)
        live = (~done).nonzero().squeeze(1)
        seen[live, tok[live]] = True
        for r in range(b):
            if done[r]:
                continue
            rows[r].append(int(tok[r]))
            if (cfg.eos_token_id is not None and rows[r][-1] == cfg.eos_token_id) or ends_with_stop(
                rows[r], cfg.stop_sequences
            ):
                done[r] = True
        if bool(done.all()) or i == cfg.max_new_tokens - 1:
            break
        logits = stepper.step(raw).float()
    if streamer is not None:
        streamer.end()
    return torch.stack(out, dim=1)
