"""Task heads on ptft_fast backbones: sequence classification/regression, token classification,
extractive QA. Seq2seq fine-tuning uses the encoder-decoder model's own LM head.

Pooling per family (sequence tasks): BERT/RoBERTa → first token ([CLS] / <s>) through a
dense+tanh pooler; GPT-2 → the last non-pad token; BART → the final decoder state at the last
non-pad token (the decoder reads the same ids). T5 is text-to-text: use ``task="seq2seq"`` with
label words. ``pooling="mean"`` instead averages the hidden states of the real tokens (any family)
and feeds them to the classifier without a pooler: MLM pre-training never trains the [CLS] state
(no NSP), so the mean is the better summary of an MLM-only encoder, and the head stays at
C·L + L parameters (what makes a < 2 % trainable share possible for PEFT on small models).
``pooling="scalar-mix"`` is ELMo's feature extraction: a learned softmax-weighted sum of all
layers' outputs (embeddings included) times a learned scale, per token (tok/qa) or then averaged
over the real tokens (cls/reg). ``freeze_backbone()`` trains the head alone on frozen features.
All head parameters live under ``self.head`` (and ``self.scalar_mix``), always trainable with PEFT;
:func:`head_state_dict` is everything outside the backbone.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast.models.heads import IGNORE_INDEX

TASKS = ("cls", "reg", "tok", "qa")
POOLINGS = ("auto", "mean", "scalar-mix")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1 = token → (B,) index of the last token (left or right padding)."""
    t = attention_mask.shape[1]
    pos = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, -1).max(dim=1).values


def masked_mean(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) hidden states, (B, T) 1 = token → (B, C) mean over the real tokens."""
    w = attention_mask.to(h.dtype)[..., None]
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class ScalarMix(nn.Module):
    """ELMo's layer mix (Peters et al., 2018, eq. 1): γ · Σ_j softmax(w)_j h_j over the N + 1
    layer outputs h_j (B, T, C); w starts at zeros (a plain average), γ at one."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        if len(layers) != self.weights.numel():
            raise ValueError(f"ScalarMix: expected {self.weights.numel()} layers, got {len(layers)}")
        w = self.weights.softmax(0).to(layers[0].dtype)
        return self.gamma.to(layers[0].dtype) * sum(wj * h for wj, h in zip(w, layers))


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A task model's weights outside its backbone (the head, a scalar mix), detached."""
    return {
        k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")
    }


def load_head_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`head_state_dict`'s output into a task model built the same way (every key of
    one must be in the other)."""
    expected = set(head_state_dict(model))
    if set(state) != expected:
        raise ValueError(
            f"task head: saved keys {sorted(set(state) - expected)} not in the model, "
            f"model keys {sorted(expected - set(state))} not saved"
        )
    model.load_state_dict(state, strict=False)


def backbone_arch(backbone: nn.Module) -> str:
    cfg = getattr(backbone, "config", None) or getattr(getattr(backbone, "model", None), "config", None)
    if cfg is None:
        raise TypeError(f"task head: cannot find the config of {type(backbone).__name__}")
    return cfg.arch


class TaskModel(nn.Module):
    """backbone (ptft model, possibly wrapped by PEFT) + a task head.

    forward(input_ids (B, T), attention_mask (B, T), token_type_ids=None, labels=None) →
    dict(loss, logits): cls (B, L) with labels (B,) int; reg (B,) with labels (B,) float;
    tok (B, T, L) with labels (B, T) (IGNORE_INDEX skipped); qa (B, T, 2) with labels (B, 2)
    start/end token indices. ``pooling`` (cls/reg only): "auto" = the family's own pooling
    (see the module docstring), "mean" = masked mean of the last hidden states, no pooler.
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: str,
        num_labels: int = 1,
        dropout: float = 0.1,
        pooling: str = "auto",
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"TaskModel: task must be one of {TASKS}, got {task!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"TaskModel: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.arch = backbone_arch(backbone)
        if self.arch == "t5":
            raise ValueError(
                "TaskModel: T5 is text-to-text; fine-tune it with task='seq2seq' and label words"
            )
        self.backbone, self.task, self.pooling = backbone, task, pooling
        hidden = (getattr(backbone, "config", None) or backbone.model.config).hidden_size
        out = {"cls": num_labels, "reg": 1, "tok": num_labels, "qa": 2}[task]
        layers: list[nn.Module] = []
        if task in ("cls", "reg") and self.arch in ("bert", "roberta") and pooling == "auto":
            layers += [nn.Linear(hidden, hidden), nn.Tanh()]  # the pooler
        layers += [nn.Dropout(dropout), nn.Linear(hidden, out)]
        self.head = nn.Sequential(*layers)
        self.num_labels = out
        cfg = getattr(backbone, "config", None) or backbone.model.config
        depth = cfg.decoder_layers if self.arch == "bart" else cfg.num_layers
        self.scalar_mix = ScalarMix(depth + 1) if pooling == "scalar-mix" else None
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """Head-only training: the backbone's weights are frozen, it runs without autograd and in
        eval mode (no dropout: fixed features), only the head (and scalar mix) learn."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def hidden(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """(B, T, C) last hidden states of the backbone, or their scalar mix over all layers."""
        kw: dict = {"return_logits": False}
        if self.arch in ("bert", "roberta") and token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        if self.arch == "bart":
            kw["decoder_input_ids"] = input_ids
        if self.scalar_mix is not None:
            kw["output_hidden_states"] = True
        with torch.no_grad() if self.backbone_frozen else contextlib.nullcontext():
            out = self.backbone(input_ids, attention_mask=attention_mask, **kw)
        if self.scalar_mix is not None:
            return self.scalar_mix(out.all_hidden_states)
        return out.hidden_states

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> dict:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.hidden(input_ids, attention_mask, token_type_ids)
        if self.task in ("cls", "reg"):
            if self.pooling in ("mean", "scalar-mix"):
                pooled = masked_mean(h, attention_mask)
            elif self.arch in ("bert", "roberta"):
                pooled = h[:, 0]
            else:
                pooled = h[torch.arange(h.shape[0], device=h.device), last_token_index(attention_mask)]
            logits = self.head(pooled)
            if self.task == "reg":
                logits = logits.squeeze(-1)
        else:
            logits = self.head(h)
            if self.task == "qa":  # padding can be neither start nor end
                logits = logits.masked_fill(~attention_mask.bool()[..., None], -1e4)
        loss = None
        if labels is not None:
            if self.task == "cls":
                loss = F.cross_entropy(logits.float(), labels)
            elif self.task == "reg":
                loss = F.mse_loss(logits.float(), labels.float())
            elif self.task == "tok":
                loss = F.cross_entropy(
                    logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
                )
            else:
                start, end = logits.float().unbind(-1)  # (B, T) each
                loss = (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2
        return {"loss": loss, "logits": logits}
