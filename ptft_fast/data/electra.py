"""ELECTRA replaced-token detection: the data and loss side.

1. The generator's batch is an MLM batch with :func:`electra_masking` (15% of tokens chosen;
   the paper's code puts [MASK] on 85% of them and keeps 15%, no random tokens).
2. :func:`replace_with_generator_samples` samples a token from the generator's softmax at each
   masked position (no gradient flows through sampling) and builds the discriminator input and
   its per-token labels: 1 = replaced (the sample differs from the original), 0 = original.
3. :func:`discriminator_loss` is the mean binary cross-entropy over real tokens and
   :func:`electra_loss` = generator MLM loss + λ · discriminator loss, λ = 50 as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_fast.data.collate import IGNORE_INDEX
from ptft_fast.data.masking import MaskingConfig

DISC_WEIGHT = 50.0  # λ in the paper


def electra_masking(mlm_probability: float = 0.15) -> MaskingConfig:
    """ELECTRA's masking recipe: chosen tokens → 85% [MASK], 15% unchanged, no random tokens."""
    return MaskingConfig(mlm_probability=mlm_probability, mask_replace_prob=0.85, random_replace_prob=0.0)


@torch.no_grad()
def replace_with_generator_samples(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    generator_logits: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Fill the masked positions with generator samples; label which tokens were replaced.

    input_ids: (B, T) the generator's (masked) input. labels: (B, T) original ids on masked
    positions, -100 elsewhere. generator_logits: (B, T, V), or (N, V) for the N masked positions in
    row-major order (what a masked-only head returns). attention_mask: (B, T), 1 = real token.
    Returns ``disc_input_ids`` (B, T) — originals with samples at the masked positions —,
    ``disc_labels`` (B, T) int64: 1 replaced, 0 original, -100 on padding, and ``sampled`` (N,).
    """
    masked = labels != IGNORE_INDEX
    logits = generator_logits[masked] if generator_logits.dim() == 3 else generator_logits
    if logits.shape[0] != int(masked.sum()):
        raise ValueError(
            f"generator_logits has {logits.shape[0]} rows for {int(masked.sum())} masked positions"
        )
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1) if len(probs) else labels[masked]
    original = torch.where(masked, labels, input_ids)
    disc_input = original.clone()
    disc_input[masked] = sampled
    disc_labels = (disc_input != original).long()
    if attention_mask is not None:
        disc_labels = disc_labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"disc_input_ids": disc_input, "disc_labels": disc_labels, "sampled": sampled}


def discriminator_loss(disc_logits: torch.Tensor, disc_labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of (B, T) logits against (B, T) labels, skipping -100."""
    keep = disc_labels != IGNORE_INDEX
    return F.binary_cross_entropy_with_logits(disc_logits[keep].float(), disc_labels[keep].float())


def electra_loss(
    generator_loss: torch.Tensor, disc_loss: torch.Tensor, disc_weight: float = DISC_WEIGHT
) -> torch.Tensor:
    """Combined objective: generator MLM loss + ``disc_weight`` · discriminator loss (λ = 50)."""
    return generator_loss + disc_weight * disc_loss
