"""ZeRO-3 helpers: make the fused paths see gathered parameters.

ZeRO-3 keeps every parameter as a 1/world shard (an empty ``(0,)`` tensor in the module) and
gathers a module's own parameters in its forward/backward hooks. Two kinds of parameters are used
outside their owner's forward in our models:

* the tied vocab projection: ``encoder.embed_tokens.weight`` is passed by the top model to
  ``MLMHead.loss`` / ``LMHead`` → ``ops.linear_cross_entropy``; its owner (the embedding) has
  already finished its forward, so ZeRO-3 has released it;
* parameters held directly by a container module whose ``forward`` is never called, only a
  method (``MLMHead.bias`` read in ``MLMHead.loss``, ``final_logits_bias``...).

:func:`register_external_parameters` registers both with
``deepspeed.zero.register_external_parameter`` on the module whose forward the trainer calls, so
they are gathered for that whole forward (and its backward). LoRA weights live in the leaf
``LoRALinear`` whose forward calls ``ops.lora_linear`` on its own parameters, so its hooks
gather them already; an empty shard reaching a fused op fails its shape check (never silently).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def shared_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters reachable from more than one module (tied embeddings), once each."""
    owners: dict[int, list[str]] = {}
    params: dict[int, tuple[str, nn.Parameter]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(mod_name)
            params.setdefault(id(p), (f"{mod_name}.{p_name}".lstrip("."), p))
    return [params[i] for i, mods in owners.items() if len(set(mods)) > 1]


def tied_output_embeddings(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Token-embedding matrices that the model also uses as its vocab projection (the head reads
    ``embed_tokens.weight`` as an attribute: no module shares it, so this needs the config)."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "tie_word_embeddings", False):
        return []
    return [
        (f"{name}.weight", m.weight)
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding) and m.num_embeddings == config.vocab_size
    ]


def container_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Direct parameters of modules that also have children (their forward may never run:
    ``MLMHead.bias`` is read in ``MLMHead.loss``). The top model's own are gathered by its hooks."""
    out = []
    for mod_name, module in model.named_modules():
        if not mod_name or not any(True for _ in module.children()):
            continue
        out += [(f"{mod_name}.{n}", p) for n, p in module.named_parameters(recurse=False)]
    return out


def external_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Tied, shared and container parameters of ``model`` (names are the first path found)."""
    seen, out = set(), []
    for name, p in tied_output_embeddings(model) + shared_parameters(model) + container_parameters(model):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def forward_roots(model: nn.Module) -> list[nn.Module]:
    """Modules whose forward the trainer calls: the model, or for ELECTRA its generator and
    discriminator (the pair's own forward is never called)."""
    if hasattr(model, "generator") and hasattr(model, "discriminator"):
        return [model.generator, model.discriminator, model]
    return [model]


def register_external_parameters(model: nn.Module) -> list[str]:
    """Register every external parameter of ``model`` with ZeRO-3 on each forward root; returns
    the names registered. A no-op effect outside ZeRO-3 (parameters are whole there)."""
    import deepspeed

    names = []
    for root in forward_roots(model):
        for name, p in external_parameters(root):
            deepspeed.zero.register_external_parameter(root, p)
            names.append(name)
    return names


class GatheredStateDict:
    """Under ZeRO-3, make ``module.state_dict()`` hold full tensors instead of empty shards, so the
    trainer's final HF export works unchanged. Gathering is a collective: every rank must call
    ``state_dict()`` together (the trainer's export runs on every rank). ``paused()`` turns it off
    around ``engine.save_checkpoint``, which wants the shards."""

    def __init__(self, module: nn.Module) -> None:
        self.enabled = True

        def hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
            self._gather_into(module, state_dict, prefix)

        module.register_state_dict_post_hook(hook)  # torch tags the hook: a function, not a method

    def _gather_into(self, module: nn.Module, state_dict: dict, prefix: str) -> None:
        if not self.enabled:
            return
        import deepspeed

        for name, p in module.named_parameters(remove_duplicate=False):
            key = prefix + name
            if key in state_dict and hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    state_dict[key] = p.detach().clone()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True
