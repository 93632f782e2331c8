"""The T5 paper's objective comparison for encoder-decoder models (Raffel et al. 2020, §3.3.1,
Table 3), besides span corruption (:mod:`ptft_fast.data.t5`):

- ``"mlm"`` (BERT-style): i.i.d. 15 % of the tokens are corrupted, 90 % of them to a mask token
  (T5 uses a sentinel) and 10 % to a random token; the decoder reconstructs the whole original.
- ``"prefix-lm"``: the row is split at a uniformly random point; the encoder reads the prefix,
  the decoder predicts the rest.
- ``"deshuffle"``: the encoder reads the tokens in a random order; the decoder predicts the
  original order.

Every variant works over whole rows (body (B, L) + lengths) with array operations. Batch:
input_ids / attention_mask (B, S), labels (B, T) (-100 padded), decoder_input_ids /
decoder_attention_mask (B, T) shifted right from ``decoder_start_id``. Inputs and targets end
with ``eos_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ptft_fast.data.collate import IGNORE_INDEX, pad_rows, shift_right

VARIANTS = ("mlm", "prefix-lm", "deshuffle")


@dataclass
class Seq2SeqVariantConfig:
    variant: str = "mlm"  # one of VARIANTS
    noise_density: float = 0.15  # "mlm": share of tokens corrupted
    mask_replace_prob: float = 0.9  # "mlm": corrupted → mask token; the rest → a random token
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}")


class Seq2SeqVariantCollator:
    """Rows of raw token ids → an encoder-decoder batch of one T5 comparison variant.

    mask_id: the "mlm" mask token (T5: a sentinel); random_ids: (R,) ids random replacements are
    drawn from (the non-special vocabulary)."""

    def __init__(
        self,
        cfg: Seq2SeqVariantConfig,
        *,
        eos_id: int,
        pad_id: int,
        decoder_start_id: int,
        mask_id: int,
        random_ids: np.ndarray,
    ) -> None:
        self.cfg = cfg
        self.eos_id, self.pad_id, self.decoder_start_id, self.mask_id = (
            eos_id,
            pad_id,
            decoder_start_id,
            mask_id,
        )
        self.random_ids = np.asarray(random_ids, dtype=np.int64)
        self.rng = np.random.default_rng(cfg.seed)

    def collate_rows(self, body: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
        """body (B, L) int64, row b's tokens in ``body[b, :lengths[b]]`` (≥ 2 tokens each)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths < 2).any():
            raise ValueError("encoder-decoder objectives need rows of at least 2 tokens")
        b, width = len(body), int(lengths.max())
        tokens = pad_rows(body, lengths, self.pad_id, width)
        real = np.arange(width)[None, :] < lengths[:, None]
        rng, v = self.rng, self.cfg.variant
        if v == "prefix-lm":
            split = 1 + (rng.random(b) * (lengths - 1)).astype(np.int64)  # uniform in [1, len - 1]
            src, src_len = tokens, split
            shift = np.arange(width)[None, :] + split[:, None]
            tgt = np.take_along_axis(tokens, np.minimum(shift, width - 1), axis=1)
            tgt_len = lengths - split
        else:
            tgt, tgt_len, src_len = tokens, lengths, lengths
            if v == "deshuffle":  # a random permutation of each row's real tokens
                keys = np.where(real, rng.random((b, width)), 2.0)
                src = np.take_along_axis(tokens, np.argsort(keys, axis=1), axis=1)
            else:  # mlm
                noise = (rng.random((b, width)) < self.cfg.noise_density) & real
                to_mask = noise & (rng.random((b, width)) < self.cfg.mask_replace_prob)
                random_tokens = self.random_ids[rng.integers(0, len(self.random_ids), (b, width))]
                src = np.where(to_mask, self.mask_id, np.where(noise, random_tokens, tokens))
        inputs = _with_eos(src, src_len, self.eos_id, self.pad_id)
        targets = _with_eos(tgt, tgt_len, self.eos_id, IGNORE_INDEX)
        labels = torch.from_numpy(targets)
        return {
            "input_ids": torch.from_numpy(inputs),
            # the eos at position src_len is a real token
            "attention_mask": torch.from_numpy(
                (np.arange(inputs.shape[1])[None, :] <= src_len[:, None]).astype(np.int64)
            ),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.decoder_start_id, self.pad_id),
            "decoder_attention_mask": (labels != IGNORE_INDEX).long(),
        }


def _with_eos(rows: np.ndarray, lengths: np.ndarray, eos_id: int, fill: int) -> np.ndarray:
    """(B, L + 1): row b's first ``lengths[b]`` tokens, ``eos_id``, then ``fill``."""
    b, width = rows.shape
    out = pad_rows(rows, lengths, fill, width + 1)
    out[np.arange(b), lengths] = eos_id
    return out
