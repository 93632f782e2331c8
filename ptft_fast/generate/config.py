"""Generation settings (one dataclass, commented defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32  # stop after this many generated tokens
    do_sample: bool = False  # False: greedy (or beam search when num_beams > 1)
    temperature: float = 1.0  # logits / temperature before sampling
    top_k: int = 0  # keep the k most likely tokens (0: off)
    top_p: float = 1.0  # keep the smallest set with cumulative probability >= top_p (1: off)
    repetition_penalty: float = 1.0  # CTRL penalty on tokens already in the sequence (1: off)
    num_beams: int = 1  # > 1: beam search
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    eos_token_id: int | None = None  # finishing token (kept in the output)
    pad_token_id: int = 0  # fills finished rows and left padding
    stop_sequences: list[list[int]] = field(default_factory=list)  # token-id sequences that end a row
    seed: int | None = None  # sampling RNG seed (None: torch's global RNG)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generate: top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"generate: top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"generate: repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.num_beams < 1:
            raise ValueError(f"generate: num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError(
                "generate: beam search is deterministic; do not combine num_beams > 1 with do_sample"
            )
