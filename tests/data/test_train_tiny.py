"""Each objective's batches train a tiny ptft_fast model on CPU: the loss goes down in a few steps.

Notes: the decoder model takes no per-document/prefix attention inputs yet, so packed CLM and
prefix LM train here with plain causal attention (their label layouts are what is exercised).
"""

import numpy as np
import pytest
import torch
from torch import nn

from ptft_fast import models
from ptft_fast.data.bart import BartCollator, BartNoiser, sentence_end_table
from ptft_fast.data.clm import PackedCLMCollator, PrefixLMCollator
from ptft_fast.data.electra import (
    discriminator_loss,
    electra_loss,
    electra_masking,
    replace_with_generator_samples,
)
from ptft_fast.data.mlm import MLMCollator, MLMConfig
from ptft_fast.data.nsp import build_nsp_examples, split_sentences
from ptft_fast.data.packing import PackedSequence
from ptft_fast.data.t5 import T5Config, T5SpanCorruptionCollator

pytestmark = pytest.mark.slow  # ~1 min on 2 shared cores

STEPS = 30


def _train(model, batches, step_loss, lr=3e-3, steps=STEPS):
    """Adam over the batches (cycled); returns the per-step losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for s in range(steps):
        loss = step_loss(batches[s % len(batches)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _decreased(losses, by=0.5):
    """The mean of the last 5 losses is at least ``by`` nats below the mean of the first 5."""
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert np.isfinite(losses).all()
    assert last < first - by, f"loss did not decrease by {by}: {first:.3f} -> {last:.3f}"


def _tiny(name, tok, **kw):
    if name.startswith("gpt"):  # the preset's ids belong to its own vocabulary: take the tokenizer's
        kw = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, **kw)
    return models.from_name(name, vocab_size=tok.vocab_size, **kw)


def test_mlm_with_nsp_trains(wordpiece, corpus):
    tok = wordpiece
    docs = [[tok.encode(s) for s in split_sentences(d)] for d in corpus[:40]]
    examples = build_nsp_examples(docs, tok.cls_id, tok.sep_id)[:128]
    coll = MLMCollator(tok, MLMConfig(nsp=True))
    batches = [examples[i : i + 16] for i in range(0, 128, 16)]
    model = _tiny("bert-tiny-cpu", tok, nsp_head=True, pad_token_id=tok.pad_id)

    def step(ex):
        b = coll(ex)  # dynamic masking: a new mask every step
        return model(**b).loss

    _decreased(_train(model, batches, step))


def test_packed_clm_and_prefix_lm_train(bpe, corpus):
    tok = bpe
    stream = [t for ids in tok.encode_batch(corpus[:30]) for t in [*ids, tok.eos_id]]
    rows, docs, d = [], [], 0
    for t in stream:
        docs.append(d)
        d += t == tok.eos_id
    ids, docs = np.array(stream), np.array(docs)
    rows = [PackedSequence(ids[i : i + 64], docs[i : i + 64]) for i in range(0, len(ids) - 64, 64)][:128]
    packed = PackedCLMCollator()
    batches = [packed(rows[i : i + 16]) for i in range(0, 128, 16)]
    model = _tiny("gpt-tiny", tok)
    _decreased(_train(model, batches, lambda b: model(b["input_ids"], b["attention_mask"], b["labels"]).loss))

    prefix = PrefixLMCollator(pad_id=tok.pad_id)
    batches = [prefix([r.input_ids for r in rows[i : i + 16]]) for i in range(0, 128, 16)]
    model = _tiny("gpt-tiny", tok)
    _decreased(_train(model, batches, lambda b: model(b["input_ids"], b["attention_mask"], b["labels"]).loss))


def test_t5_span_corruption_trains(unigram, corpus):
    tok = unigram
    coll = T5SpanCorruptionCollator(tok.sentinel_ids, tok.eos_id, tok.pad_id, T5Config(inputs_length=32))
    stream = [t for ids in tok.encode_batch(corpus[:20]) for t in ids]
    raw = coll.raw_length
    examples = [stream[i : i + raw] for i in range(0, len(stream) - raw, raw)][:128]
    batches = [coll(examples[i : i + 16]) for i in range(0, 128, 16)]
    model = _tiny(
        "t5-tiny", tok, pad_token_id=tok.pad_id, decoder_start_token_id=tok.pad_id, eos_token_id=tok.eos_id
    )
    _decreased(_train(model, batches, lambda b: model(**b).loss))


def test_bart_noising_trains(bpe, corpus):
    tok = bpe
    noiser = BartNoiser(tok.mask_id, sentence_end_table(tok.backend.get_vocab(), tok.vocab_size))
    coll = BartCollator(noiser, tok.bos_id, tok.eos_id, tok.pad_id, max_length=64)
    stream = [t for ids in tok.encode_batch(corpus[:20]) for t in ids]
    examples = [stream[i : i + 62] for i in range(0, len(stream) - 62, 62)][:128]
    batches = [examples[i : i + 16] for i in range(0, 128, 16)]
    model = _tiny(
        "bart-tiny",
        tok,
        pad_token_id=tok.pad_id,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        decoder_start_token_id=tok.eos_id,
    )
    _decreased(_train(model, batches, lambda ex: model(**coll(ex)).loss))


def test_electra_generator_and_discriminator_train(wordpiece, wp_docs, chunks):
    tok = wordpiece
    coll = MLMCollator(tok, MLMConfig(masking=electra_masking()))
    examples = chunks(wp_docs, 62)[:128]
    batches = [examples[i : i + 16] for i in range(0, 128, 16)]
    generator = _tiny("bert-tiny-cpu", tok, pad_token_id=tok.pad_id)
    discriminator = models.Encoder(generator.config)
    discriminator.embed_tokens = generator.encoder.embed_tokens  # shared token embeddings
    disc_head = nn.Linear(generator.config.hidden_size, 1)
    params = nn.ModuleList([generator, discriminator, disc_head])
    sample_gen = torch.Generator().manual_seed(0)
    disc_losses = []

    def step(ex):
        b = coll(ex)
        out = generator(**b, return_logits=True)
        rtd = replace_with_generator_samples(
            b["input_ids"], b["labels"], out.logits, b["attention_mask"], generator=sample_gen
        )
        h = discriminator(rtd["disc_input_ids"], b["attention_mask"], b["token_type_ids"])
        d_loss = discriminator_loss(disc_head(h).squeeze(-1), rtd["disc_labels"])
        disc_losses.append(d_loss.item())
        return electra_loss(out.loss, d_loss)

    _decreased(_train(params, batches, step))
    # the discriminator first learns the replaced-token base rate (from ln 2), then keeps improving
    assert np.mean(disc_losses[-5:]) < 0.8 * disc_losses[0]
