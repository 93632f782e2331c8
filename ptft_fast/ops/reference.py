"""Pure-PyTorch references of every ptft_fast op.

They are the CPU path (``backend="torch"``, called with ``upcast=False``: native fused ops in the
input dtype) and the test oracle for the kernels (``upcast=True``: computed in fp32, or fp64 for
fp64 inputs, and cast back). Inputs are assumed valid; the public ops in ``ptft_fast.ops`` check
them first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_fast.ops.attention_args import DEFAULT as DEFAULT_ATTENTION_ARGS
from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.graph_mode import in_graph
from ptft_fast.ops.relative_bias import RelativePositionBias

# Elements of one (rows x vocab) logits block in linear_cross_entropy (64 MiB in fp32).
LINEAR_CROSS_ENTROPY_BLOCK_ELEMS = 1 << 24
LINEAR_CROSS_ENTROPY_VOCAB_CHUNK = 1 << 16


def _compute_dtype(t: torch.Tensor, upcast: bool) -> torch.dtype:
    dtype = t.dtype
    return dtype if (not upcast or dtype == torch.float64) else torch.float32


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` (None stays None). A no-op ``.to`` still costs ~1 µs of host time per call:
    skipped when the dtype already matches (the torch backend's usual case)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


# ----------------------------------------------------------------------------------- layer norm


def layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: torch.Tensor | None = None,
    rms: bool = False,
    dropout_p: float = 0.0,
    return_residual: bool = False,
    upcast: bool = True,
):
    """norm(dropout(x) + residual) over the last dim.

    x, residual: (..., H); weight, bias: (H,). Returns y like x, and with ``return_residual`` also
    the pre-norm sum h = dropout(x) + residual (the next block's residual stream).
    """
    if dropout_p > 0.0:
        x = F.dropout(x, dropout_p, training=True)
    h = x if residual is None else x + residual
    cdt = _compute_dtype(h, upcast)
    hc, w, b = _cast(h, cdt), _cast(weight, cdt), _cast(bias, cdt)
    if rms:
        y = F.rms_norm(hc, (h.shape[-1],), w, eps)
        if b is not None:
            y = y + b
    else:
        y = F.layer_norm(hc, (h.shape[-1],), w, b, eps)
    y = _cast(y, x.dtype)
    return (y, h) if return_residual else y


# ------------------------------------------------------------------------------------ attention


def varlen_positions(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed tokens: (sequence index, position within its sequence), each (total,) int64."""
    cu = cu_seqlens.long()
    tok = torch.arange(total, device=cu.device)
    seq = torch.searchsorted(cu[1:], tok, right=True)
    return seq, tok - cu[seq]


def _pad_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int):
    """(total, H, D) packed → (B, max_seqlen, H, D) zero-padded, plus flat row index (total,)."""
    batch = cu_seqlens.numel() - 1
    seq, pos = varlen_positions(cu_seqlens, x.shape[0])
    flat = seq * max_seqlen + pos
    out = x.new_zeros(batch * max_seqlen, *x.shape[1:]).index_copy(0, flat, x)
    return out.view(batch, max_seqlen, *x.shape[1:]), flat


def _lengths_mask(cu_seqlens: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max_seqlen) bool True where a position holds a token, and the lengths (B,)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    pos = torch.arange(max_seqlen, device=cu_seqlens.device)
    return pos[None, :] < lengths[:, None], lengths


def causal_visible(
    tq: int, tk: int, offset, prefix_lengths: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Bool (Tq, Tk), or (B, 1, Tq, Tk) with a per-sequence offset / prefix: query i sees key j
    iff j <= i + offset (causal, bottom-right aligned), or j < prefix_lengths[b] (prefix LM)."""
    i = torch.arange(tq, device=device)[:, None]
    j = torch.arange(tk, device=device)[None, :]
    seen = j <= i + offset
    if prefix_lengths is not None:
        seen = seen | (j < prefix_lengths.to(device).view(-1, 1, 1, 1))
    return seen


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs | None = None,
    *,
    upcast: bool = True,
    **options,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias + mask) v through ``F.scaled_dot_product_attention``.

    q: (B, Tq, Hq, D), k/v: (B, Tk, Hkv, D), or packed (total, H, D) with cu_seqlens_q/k (B+1,)
    and max_seqlen_q/k. The options come as one :class:`AttentionArgs` (the backends' form) or,
    for callers such as tests, as its fields by keyword (``causal=True, attn_bias=...``), not both.
    key_padding_mask: (B, Tk) bool, True = attend. attn_bias: broadcastable
    to (B, Hq, Tq, Tk) (padded coordinates in varlen form), or a ``RelativePositionBias`` (T5,
    materialized here). ``causal`` is aligned to the bottom right: query i sees key j iff
    j <= i + (Tk - Tq), per sequence, or (prefix LM, prefix_lengths (B,)) j < prefix_lengths[b].
    Queries that see no key give zeros. Returns like q.
    """
    if options:
        if args is not None:
            raise TypeError("attention_ref: give an AttentionArgs or its fields as keywords, not both")
        args = AttentionArgs(**options)
    elif args is None:
        args = DEFAULT_ATTENTION_ARGS
    causal, key_padding_mask, attn_bias = args.causal, args.key_padding_mask, args.attn_bias
    cu_seqlens_q, cu_seqlens_k = args.cu_seqlens_q, args.cu_seqlens_k
    max_seqlen_q, max_seqlen_k, prefix_lengths = args.max_seqlen_q, args.max_seqlen_k, args.prefix_lengths
    dropout_p, softmax_scale = args.dropout_p, args.softmax_scale
    out_dtype = q.dtype
    cdt = _compute_dtype(q, upcast)
    varlen = cu_seqlens_q is not None
    if attn_bias is not None:
        if isinstance(attn_bias, RelativePositionBias):  # T5 bias given as its table: materialize
            tq, tk = (max_seqlen_q, max_seqlen_k) if varlen else (q.shape[1], k.shape[1])
            attn_bias = attn_bias.materialize(tq, tk)
        attn_bias = _cast(attn_bias, cdt)
    q, k, v = _cast(q, cdt), _cast(k, cdt), _cast(v, cdt)
    if varlen:
        q, q_rows = _pad_varlen(q, cu_seqlens_q, max_seqlen_q)
        k, _ = _pad_varlen(k, cu_seqlens_k, max_seqlen_k)
        v, _ = _pad_varlen(v, cu_seqlens_k, max_seqlen_k)
        key_padding_mask, len_k = _lengths_mask(cu_seqlens_k, max_seqlen_k)
        len_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
        causal_offset = (len_k - len_q)[:, None, None, None]  # (B, 1, 1, 1)
    q_shape, k_shape = q.shape, k.shape
    tq, tk = q_shape[1], k_shape[1]
    if not varlen:
        causal_offset = tk - tq
    # (B, T, H, D) → (B, H, T, D) for SDPA
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q_shape[2] != k_shape[2]

    allowed = None  # bool, broadcastable to (B, H, Tq, Tk)
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
    if causal and (
        allowed is not None or attn_bias is not None or varlen or tq != tk or prefix_lengths is not None
    ):
        tri = causal_visible(tq, tk, causal_offset, prefix_lengths, q.device)
        allowed = tri if allowed is None else allowed & tri
    use_is_causal = causal and allowed is None

    mask = attn_bias
    no_key = None
    if allowed is not None:
        # Rows with no visible key: let them see everything (finite softmax, clean grads), zero after.
        no_key = ~allowed.any(dim=-1, keepdim=True)
        allowed = allowed | no_key
        mask = allowed if attn_bias is None else attn_bias.masked_fill(~allowed, float("-inf"))
    if softmax_scale is None and not gqa:  # positional: parsing keywords costs host time per call
        out = F.scaled_dot_product_attention(qt, kt, vt, mask, dropout_p, use_is_causal)
    else:
        out = F.scaled_dot_product_attention(
            qt, kt, vt, mask, dropout_p, use_is_causal, scale=softmax_scale, enable_gqa=gqa
        )
    if no_key is not None:
        out = out.masked_fill(no_key, 0.0)
    out = out.transpose(1, 2)  # (B, Tq, Hq, D)
    if varlen:
        out = out.reshape(-1, *out.shape[2:]).index_select(0, q_rows)
    return _cast(out, out_dtype)


def attention_weights_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    prefix_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias + mask) in float32: the probabilities ``attention_ref`` applies
    to v (before dropout). q: (B, Tq, Hq, D), k: (B, Tk, Hkv, D); key_padding_mask: (B, Tk) bool,
    True = attend; attn_bias broadcastable to (B, Hq, Tq, Tk) or a ``RelativePositionBias``;
    causal aligned bottom-right (prefix_lengths (B,): prefix LM). Returns (B, Hq, Tq, Tk); a query
    that sees no key gets zeros."""
    tq, tk = q.shape[1], k.shape[1]
    if isinstance(attn_bias, RelativePositionBias):
        attn_bias = attn_bias.materialize(tq, tk)
    qt, kt = q.transpose(1, 2).float(), k.transpose(1, 2).float()  # (B, H, T, D)
    if kt.shape[1] != qt.shape[1]:  # GQA/MQA: each key head serves Hq / Hkv query heads
        kt = kt.repeat_interleave(qt.shape[1] // kt.shape[1], dim=1)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    scores = (qt @ kt.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    if attn_bias is not None:
        scores = scores + attn_bias.float()
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = causal_visible(tq, tk, tk - tq, prefix_lengths, q.device)
    if allowed.dim() == 2:
        allowed = allowed[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return probs.nan_to_num(0.0)  # rows without a visible key: all -inf → NaN → 0


# ----------------------------------------------------------------------- linear cross-entropy


def _linear_cross_entropy_rows(h, weight, bias, y, smoothing, z_loss, grad_scale):
    """Loss per row of ``h @ weight.T + bias`` vs labels ``y``, chunked.

    h: (M, H), weight: (V, H), bias: (V,) | None, y: (M,) all valid. With ``grad_scale`` (M,) the
    gradients of sum(grad_scale * loss) are produced in the same pass: dh (M, H) in h's dtype,
    dW (V, H) and db (V,) in fp32. Logits exist only as (rows, vocab_chunk) blocks.
    """
    m_rows, vocab = h.shape[0], weight.shape[0]
    vchunk = min(vocab, LINEAR_CROSS_ENTROPY_VOCAB_CHUNK)
    rchunk = max(1, LINEAR_CROSS_ENTROPY_BLOCK_ELEMS // vchunk)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    loss = torch.empty(m_rows, dtype=acc, device=h.device)
    want_grad = grad_scale is not None
    if want_grad:
        dh = torch.empty_like(h)
        dw = torch.zeros(weight.shape, dtype=acc, device=h.device)
        db = torch.zeros(vocab, dtype=acc, device=h.device) if bias is not None else None

    # One (rows × vocab-chunk) buffer reused by every block: a fresh 10-100 MB tensor per block
    # costs page faults on CPU (~25 % of the matmul time at GPT-2's vocabulary).
    buf = torch.empty(min(rchunk, m_rows) * vchunk, dtype=acc, device=h.device) if h.dtype == acc else None

    def logits_block(hc, v0, v1):
        if buf is None:  # low-precision inputs: the fp32 copy is the block
            z = hc @ weight[v0:v1].T
            return (z if bias is None else z + bias[v0:v1]).to(acc)
        z = torch.mm(hc, weight[v0:v1].T, out=buf[: hc.shape[0] * (v1 - v0)].view(hc.shape[0], v1 - v0))
        return z if bias is None else z.add_(bias[v0:v1])

    for r0 in range(0, m_rows, rchunk):
        hc, yc = h[r0 : r0 + rchunk], y[r0 : r0 + rchunk]
        n = hc.shape[0]
        if vchunk == vocab:  # one block holds the whole vocab: exponentiate it once, in place
            z = logits_block(hc, 0, vocab)
            z_label = z.gather(1, yc[:, None]).squeeze(1)
            z_total = z.sum(dim=1) if smoothing > 0.0 else None
            z_max = z.amax(dim=1)
            z.sub_(z_max[:, None]).exp_()  # z := exp(logits - max); softmax = z / sum_exp
            sum_exp = z.sum(dim=1)
            lse = z_max + torch.log(sum_exp)
        else:  # online log-sum-exp over vocab chunks
            z = None
            run_max = torch.full((n,), float("-inf"), dtype=acc, device=h.device)
            run_sum = torch.zeros(n, dtype=acc, device=h.device)
            z_label = torch.zeros(n, dtype=acc, device=h.device)
            z_total = torch.zeros(n, dtype=acc, device=h.device)
            for v0 in range(0, vocab, vchunk):
                v1 = min(v0 + vchunk, vocab)
                zc = logits_block(hc, v0, v1)
                new_max = torch.maximum(run_max, zc.amax(dim=1))
                run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(zc - new_max[:, None]).sum(dim=1)
                run_max = new_max
                in_chunk = (yc >= v0) & (yc < v1)
                picked = zc.gather(1, (yc - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1)
                z_label = torch.where(in_chunk, picked, z_label)
                if smoothing > 0.0:
                    z_total = z_total + zc.sum(dim=1)
            lse = run_max + torch.log(run_sum)
        row_loss = (1.0 - smoothing) * (lse - z_label)
        if smoothing > 0.0:
            row_loss = row_loss + smoothing * (lse - z_total / vocab)
        if z_loss > 0.0:
            row_loss = row_loss + z_loss * lse * lse
        loss[r0 : r0 + n] = row_loss
        if not want_grad:
            continue
        g = grad_scale[r0 : r0 + n].to(acc)
        coef = (g * (1.0 + 2.0 * z_loss * lse))[:, None]
        dh_c = torch.zeros(hc.shape, dtype=acc, device=h.device)
        hc_acc = hc.to(acc)
        for v0 in range(0, vocab, vchunk):
            v1 = min(v0 + vchunk, vocab)
            # dloss/dlogits = coef · softmax − g · ((1 − ε) onehot + ε / V), built in place
            if z is not None:  # already exp(logits - max): one scale gives coef · softmax
                d = z.mul_(coef / sum_exp[:, None])
            else:
                d = logits_block(hc, v0, v1).sub_(lse[:, None]).exp_().mul_(coef)
            if smoothing > 0.0:
                d.sub_((g * smoothing / vocab)[:, None])
            in_chunk = (yc >= v0) & (yc < v1)
            col = (yc - v0).clamp(0, v1 - v0 - 1)[:, None]
            d.scatter_add_(1, col, -((1.0 - smoothing) * g * in_chunk)[:, None])
            dh_c.addmm_(d, weight[v0:v1].to(acc))
            dw[v0:v1].addmm_(d.T, hc_acc)
            if db is not None:
                db[v0:v1] += d.sum(dim=0)
        dh[r0 : r0 + n] = dh_c.to(h.dtype)
    grads = (dh, dw, db) if want_grad else None
    return loss, grads


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked linear + cross-entropy; gradients produced in the forward pass when the loss is
    reduced to a scalar (one logits pass), recomputed in backward for reduction="none"."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, smoothing, z_loss, reduction):
        valid = labels != ignore_index
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        if hidden.is_cpu and not in_graph():
            # Dropping unlabeled rows needs their count on the host: free on CPU, a sync on GPU
            # (and a data-dependent shape in a graph).
            rows = valid.nonzero().squeeze(1)
            h, y = hidden.index_select(0, rows), labels.index_select(0, rows)
            row_weight = torch.ones(rows.shape, dtype=acc, device=hidden.device)
        else:
            rows, h, y = None, hidden, labels.masked_fill(~valid, 0)
            row_weight = valid.to(acc)
        count = valid.sum()
        needs_grad = any(ctx.needs_input_grad[:3])
        early = needs_grad and reduction != "none"
        scale = None
        if early:
            scale = row_weight / count.clamp(min=1) if reduction == "mean" else row_weight
        row_loss, grads = _linear_cross_entropy_rows(h, weight, bias, y, smoothing, z_loss, scale)
        row_loss = row_loss * row_weight
        ctx.weight_dtype = weight.dtype
        ctx.meta = (smoothing, z_loss, hidden.shape[0], early)
        if early:
            ctx.save_for_backward(rows, *(g for g in grads if g is not None))
            ctx.has_bias = grads[2] is not None
        else:
            ctx.save_for_backward(rows, h, weight, bias, y, row_weight)
        if reduction == "none":
            full = row_loss.new_zeros(hidden.shape[0])
            out = full.index_copy(0, rows, row_loss) if rows is not None else row_loss
            return out  # accumulation dtype; the caller casts (see loss_dtype)
        total = row_loss.sum()
        return total / count if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_out):
        smoothing, z_loss, n_rows, early = ctx.meta
        if early:
            rows, dh, dw, *rest = ctx.saved_tensors
            db = rest[0] if ctx.has_bias else None
            g = grad_out.to(dw.dtype)
            dh = dh * g.to(dh.dtype)
            dw, db = dw * g, (db * g if db is not None else None)
        else:
            rows, h, weight, bias, y, row_weight = ctx.saved_tensors
            g = grad_out.to(row_weight.dtype).reshape(-1)
            g = g.index_select(0, rows) if rows is not None else g
            _, (dh, dw, db) = _linear_cross_entropy_rows(
                h, weight, bias, y, smoothing, z_loss, g * row_weight
            )
        if rows is not None:
            dh = dh.new_zeros(n_rows, dh.shape[1]).index_copy(0, rows, dh)
        weight_dtype = ctx.weight_dtype
        return (  # one entry per forward input
            dh,
            dw.to(weight_dtype),
            db.to(weight_dtype) if db is not None else None,
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    upcast: bool = True,
    loss_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels) without materializing the (N, V) logits.

    hidden: (..., H), weight: (V, H), bias: (V,) | None, labels: (...) int64 in [0, V) or
    ``ignore_index``. Rows labeled ``ignore_index`` never reach the matmul. ``label_smoothing``
    follows ``F.cross_entropy``; ``z_loss`` adds z_loss · logsumexp² per row. Returns a scalar, or
    labels-shaped per-row losses (0 at ignored rows) for reduction="none", in ``loss_dtype``
    (default: hidden's dtype).
    """
    out_shape = labels.shape
    cdt = _compute_dtype(hidden, upcast)
    h2, w, b = _cast(hidden.reshape(-1, hidden.shape[-1]), cdt), _cast(weight, cdt), _cast(bias, cdt)
    out = _LinearCrossEntropy.apply(
        h2, w, b, labels.reshape(-1), ignore_index, label_smoothing, z_loss, reduction
    )
    out = _cast(out, loss_dtype or hidden.dtype)
    return out.reshape(out_shape) if reduction == "none" else out


# ----------------------------------------------------------------------------------------- LoRA


def lora_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    *,
    dropout_p: float = 0.0,
    upcast: bool = True,
) -> torch.Tensor:
    """x Wᵀ + b + scaling · (dropout(x) Aᵀ) Bᵀ.

    x: (..., in), weight: (out, in), bias: (out,) | None, lora_a: (r, in), lora_b: (out, r).
    Returns (..., out) in x's dtype.
    """
    cdt = _compute_dtype(x, upcast)
    xc, w, b, a, bb = (
        _cast(x, cdt),
        _cast(weight, cdt),
        _cast(bias, cdt),
        _cast(lora_a, cdt),
        _cast(lora_b, cdt),
    )
    base = F.linear(xc, w, b)
    xd = F.dropout(xc, dropout_p, training=True) if dropout_p > 0.0 else xc
    return _cast(base + scaling * F.linear(F.linear(xd, a), bb), x.dtype)
