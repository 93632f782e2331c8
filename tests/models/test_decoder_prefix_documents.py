"""GPT-2 as a prefix LM (``prefix_mask``) and over rows of packed documents (``doc_ids``): who
sees whom, losses equal to padded single-document batches, no gradient across documents, KV cache
= full forward. On the reference path and the Triton kernels (interpreter), and the dense
graph-mode form of the document path."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.models import from_name
from ptft_fast.ops import use_backend
from ptft_fast.ops.dispatch import backend_available
from ptft_fast.ops.graph_mode import static_shapes

IGNORE = -100
# the Triton kernels on the CPU model through the interpreter (with a GPU, tests/kernels runs them there)
TRITON = pytest.param(
    "triton",
    marks=[
        pytest.mark.triton,
        pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter path: CPU only"),
    ],
)
PATHS = ["torch", TRITON, "graph"]


def _path(name: str):
    """The attention path a test runs on: the reference, the Triton kernels, or graph mode (the
    document path's dense mask)."""
    if name == "graph":
        return static_shapes()
    return use_backend(name)


def _model():
    torch.manual_seed(0)
    return from_name("gpt-tiny", initializer_range=0.2).eval()


def _changed(model, ids, pos, **kw) -> list[int]:
    """Positions whose logits change when the token at ``pos`` of row 0 changes."""
    with torch.no_grad():
        base = model(ids, return_logits=True, **kw).logits[0]
        other = ids.clone()
        other[0, pos] = (other[0, pos] + 17) % model.config.vocab_size
        moved = model(other, return_logits=True, **kw).logits[0]
    diff = (base - moved).abs().amax(-1)
    return [t for t in range(ids.shape[1]) if diff[t] > 0]


@pytest.mark.parametrize("path", PATHS)
def test_prefix_sees_later_prefix_not_suffix_and_suffix_sees_whole_prefix(path):
    """Row of 8 tokens, prefix 4: a prefix token sees a later prefix token and no suffix token;
    a suffix token sees the whole prefix and no later token."""
    model, ids = _model(), torch.randint(3, 1000, (1, 8))
    kw = dict(prefix_mask=torch.arange(8)[None] < 4)
    with _path(path):
        assert _changed(model, ids, 3, **kw) == list(range(8))  # token 0 sees prefix token 3
        assert _changed(model, ids, 5, **kw) == [5, 6, 7]  # prefix and earlier suffix: blind to it
        assert _changed(model, ids, 1, **kw) == list(range(8))  # the suffix sees all of the prefix
        causal = _changed(model, ids, 3)  # without the prefix: plain causal
    assert causal == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("path", PATHS)
def test_packed_documents_see_only_their_own_document(path):
    """Two documents in one row, each with its own prefix: a change in one never reaches the
    other; inside each, the prefix rule holds."""
    model, ids = _model(), torch.randint(3, 1000, (1, 9))
    doc_ids = torch.tensor([[4, 4, 4, 4, 9, 9, 9, 9, 9]])
    prefix = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 0]]).bool()
    with _path(path):
        assert _changed(model, ids, 1, doc_ids=doc_ids, prefix_mask=prefix) == [0, 1, 2, 3]
        assert _changed(model, ids, 6, doc_ids=doc_ids, prefix_mask=prefix) == [4, 5, 6, 7, 8]
        assert _changed(model, ids, 7, doc_ids=doc_ids, prefix_mask=prefix) == [7, 8]
        assert _changed(model, ids, 2, doc_ids=doc_ids) == [2, 3]  # causal, document 4 only


# ------------------------------------------------------------------ packed = padded documents

DOCS = [5, 3, 7, 4, 6, 2]  # lengths; rows of 15: [5 3 7] [4 6 2 + 3 padding]
PREFIX = [2, 1, 3, 2, 4, 1]


def _documents():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 1000, (n,), generator=g) for n in DOCS]


def _packed(docs, prefix: bool):
    """(ids, labels, doc_ids, prefix_mask) for two rows of 15 positions, labels as the packed
    collators build them: -100 on each document's first token (or its prefix) and on padding."""
    rows = [docs[:3], docs[3:]]
    ids = torch.zeros(2, 15, dtype=torch.long)
    doc_ids = torch.full((2, 15), -1)
    labels = torch.full((2, 15), IGNORE)
    pmask = torch.zeros(2, 15, dtype=torch.bool)
    d = 0
    for r, row in enumerate(rows):
        t = 0
        for doc in row:
            n = len(doc)
            ids[r, t : t + n], doc_ids[r, t : t + n] = doc, d
            skip = PREFIX[d] if prefix else 1
            labels[r, t + skip : t + n] = doc[skip:]
            pmask[r, t : t + PREFIX[d]] = True
            t, d = t + n, d + 1
    return ids, labels, doc_ids, (pmask if prefix else None)


def _padded(docs, prefix: bool):
    """One document per row, right-padded: (ids, mask, labels, prefix_mask)."""
    t = max(DOCS)
    ids = torch.zeros(len(docs), t, dtype=torch.long)
    mask = torch.zeros(len(docs), t, dtype=torch.long)
    labels = torch.full((len(docs), t), IGNORE)
    for i, doc in enumerate(docs):
        ids[i, : len(doc)], mask[i, : len(doc)] = doc, 1
        skip = PREFIX[i] if prefix else 1
        labels[i, skip : len(doc)] = doc[skip:]
    pmask = torch.arange(t)[None] < torch.tensor(PREFIX)[:, None]
    return ids, mask, labels, (pmask if prefix else None)


@pytest.mark.parametrize("prefix", [False, True], ids=["clm", "prefix-lm"])
@pytest.mark.parametrize("path", PATHS)
def test_packed_loss_and_logits_equal_padded_single_document_batch(path, prefix):
    model, docs = _model(), _documents()
    ids, labels, doc_ids, pmask = _packed(docs, prefix)
    pids, pm, plabels, ppmask = _padded(docs, prefix)
    with torch.no_grad(), _path(path):
        packed = model(ids, labels=labels, doc_ids=doc_ids, prefix_mask=pmask, return_logits=True)
        alone = model(pids, pm, labels=plabels, prefix_mask=ppmask, return_logits=True)
    torch.testing.assert_close(packed.loss, alone.loss, atol=1e-5, rtol=1e-5)
    real = doc_ids >= 0
    torch.testing.assert_close(packed.logits[real], alone.logits[pm.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prefix", [False, True], ids=["clm", "prefix-lm"])
@pytest.mark.parametrize("path", PATHS)
def test_gradient_of_one_document_loss_is_zero_on_other_documents(path, prefix):
    """d loss(document 1) / d embeddings of every other document == 0 exactly (also the next
    document in the same row, which follows it)."""
    model, docs = _model(), _documents()
    ids, labels, doc_ids, pmask = _packed(docs, prefix)
    labels = labels.masked_fill(doc_ids != 1, IGNORE)  # document 1's loss only
    captured = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = model.embed_tokens.register_forward_hook(keep)
    try:
        with _path(path):
            model(ids, labels=labels, doc_ids=doc_ids, prefix_mask=pmask).loss.backward()
    finally:
        hook.remove()
    (emb,) = captured
    grad = emb.grad if emb.dim() == 2 else emb.grad[doc_ids >= 0]  # (tokens, C) in row order
    docs_of = doc_ids[doc_ids >= 0]
    assert torch.equal(grad[docs_of != 1], torch.zeros_like(grad[docs_of != 1]))
    # inside document 1 every token but the last (which predicts nothing there) gets a gradient
    assert (grad[docs_of == 1][:-1].abs().sum(-1) > 0).all()


def test_documents_with_a_padding_mask_and_explicit_positions():
    """attention_mask drops tokens from the documents; explicit position_ids replace the restart."""
    model, docs = _model(), _documents()
    ids, labels, doc_ids, _ = _packed(docs, False)
    with torch.no_grad():
        base = model(ids, labels=labels, doc_ids=doc_ids)
        masked = model(ids, (doc_ids >= 0).long(), labels=labels, doc_ids=doc_ids.clamp_min(0))
        pos = torch.arange(15).expand(2, 15)
        moved = model(ids, labels=labels, doc_ids=doc_ids, position_ids=pos)
    torch.testing.assert_close(masked.loss, base.loss, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(moved.loss, base.loss)


def test_bad_document_and_prefix_inputs_are_named():
    model, ids = _model(), torch.randint(3, 1000, (2, 6))
    with pytest.raises(ValueError, match=r"prefix_mask must be \(B, past \+ T\)"):
        model(ids, prefix_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="doc_ids must be an integer tensor"):
        model(ids, doc_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="KV cache"):
        model(ids, doc_ids=torch.zeros(2, 6, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match="every token as padding"):
        model(ids, doc_ids=torch.full((2, 6), -1))


# ------------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("path", ["torch", TRITON])
def test_prefix_kv_cache_matches_full_forward(path):
    """Prompt of 5 (left-padded in row 1) as the prefix, encoded once; then 4 tokens decoded one by
    one with the cache: the logits equal one full forward with the same prefix mask."""
    model = _model()
    ids = torch.randint(3, 1000, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :2] = 0
    prefix = torch.zeros(2, 9, dtype=torch.bool)
    prefix[:, :5] = mask[:, :5].bool()
    with torch.no_grad(), _path(path):
        full = model(ids, mask, prefix_mask=prefix).logits
        out = model(ids[:, :5], mask[:, :5], prefix_mask=prefix[:, :5], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(5, 9):
            out = model(
                ids[:, t : t + 1],
                mask[:, : t + 1],
                prefix_mask=prefix[:, : t + 1],
                cache=cache,
                use_cache=True,
            )
            steps.append(out.logits)
            cache = out.cache
        causal = model(ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[real], causal[real], atol=1e-3)  # the prefix does change them


@pytest.mark.gpu
@pytest.mark.skipif(
    not backend_available("cuda")[0], reason="cuda backend unavailable (ptft_fast._C not built)"
)
@pytest.mark.parametrize("prefix", [False, True], ids=["clm", "prefix-lm"])
def test_cuda_packed_documents_equal_padded_single_document_batch(prefix):
    """The CUDA kernels on the model's document path (varlen + per-document prefix lengths) in
    bf16: packed loss = padded single-document loss, both near the fp32 reference path."""
    model, docs = _model().cuda(), _documents()
    packed = [None if t is None else t.cuda() for t in _packed(docs, prefix)]
    padded = [None if t is None else t.cuda() for t in _padded(docs, prefix)]
    losses = {}
    with torch.no_grad():
        for backend in ("torch", "cuda"):
            with use_backend(backend), torch.autocast("cuda", torch.bfloat16, enabled=backend == "cuda"):
                ids, labels, doc_ids, pmask = packed
                losses[backend, "packed"] = model(ids, labels=labels, doc_ids=doc_ids, prefix_mask=pmask).loss
                ids, mask, labels, pmask = padded
                losses[backend, "padded"] = model(ids, mask, labels=labels, prefix_mask=pmask).loss
    torch.testing.assert_close(losses["torch", "packed"], losses["torch", "padded"], atol=1e-5, rtol=1e-5)
    for form in ("packed", "padded"):
        torch.testing.assert_close(losses["cuda", form].float(), losses["torch", form], atol=2e-2, rtol=2e-2)
