"""GPT-2 position ids: left padding does not move a prompt's real tokens, with or without a cache."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.generate import left_pad
from ptft_fast.models import from_name

TOL = dict(atol=1e-5, rtol=1e-5)


def model():
    torch.manual_seed(0)
    return from_name("gpt-tiny").eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (7, 3, 5)]


@torch.no_grad()
def test_left_padded_rows_equal_prompts_alone_through_cache_steps():
    """Prompt, then two cached one-token steps: each row's logits equal that prompt run alone."""
    m = model()
    ids, mask = left_pad(prompts(), 0)
    nxt = torch.randint(3, 1000, (3, 2), generator=torch.Generator().manual_seed(2))
    out = m(ids, mask, use_cache=True)
    rows = [out.logits]
    for t in range(2):
        mask = torch.cat([mask, mask.new_ones(3, 1)], 1)
        out = m(nxt[:, t : t + 1], mask, cache=out.cache, use_cache=True)
        rows.append(out.logits)
    batched = torch.cat(rows, 1)  # (3, T + 2, V)
    for i, p in enumerate(prompts()):
        alone = m(torch.tensor([p + nxt[i].tolist()])).logits[0]
        torch.testing.assert_close(batched[i, -alone.shape[0] :], alone, **TOL)


@torch.no_grad()
def test_explicit_position_ids_override_the_default():
    m = model()
    ids, mask = left_pad(prompts(), 0)
    default = m(ids, mask).logits
    counted = (mask.cumsum(-1) - 1).clamp_min(0)
    torch.testing.assert_close(m(ids, mask, position_ids=counted).logits, default, atol=0, rtol=0)
    shifted = m(ids, mask, position_ids=torch.arange(ids.shape[1]).expand_as(ids)).logits
    assert not torch.allclose(shifted[1], default[1])  # row 1 is padded: its positions moved
    torch.testing.assert_close(shifted[0], default[0], atol=0, rtol=0)  # row 0 is not


def test_position_errors_name_the_rule():
    m = model()
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"position_ids must be an integer tensor of shape \(B, T\)"):
        m(ids, position_ids=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, max_position_embeddings=128\)"):
        m(ids, position_ids=torch.tensor([[0, 1, 2, 128]]))
    with pytest.raises(ValueError, match=r"129 tokens .* exceeds max_position_embeddings=128"):
        m(torch.zeros(1, 129, dtype=torch.long))
    # explicit positions may place a padded batch longer than the table
    long = torch.zeros(1, 129, dtype=torch.long)
    mask = torch.ones_like(long)
    mask[0, :2] = 0
    assert m(long, mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits.shape == (1, 129, 1024)
