"""Truncated importance-sampling weights (engine/trainer/importance.py), against TRL's definition."""

from __future__ import annotations

import math

import pytest
import torch

from engine.trainer.importance import importance_weights


def test_equal_logprobs_give_weight_one():
    lp = torch.randn(3, 5)
    mask = torch.ones(3, 5)
    assert torch.allclose(importance_weights(lp, lp.clone(), mask), torch.ones(3, 5))


def test_token_truncate_is_min_of_ratio_and_cap():
    trainer = torch.tensor([[0.0, -1.0, -3.0]])
    sampler = torch.tensor([[-2.0, -1.5, -1.0]])  # ratios e^2, e^0.5, e^-2
    w = importance_weights(trainer, sampler, torch.ones(1, 3), clip_max=3.0)
    assert torch.allclose(w, torch.tensor([[3.0, math.exp(0.5), math.exp(-2.0)]]))
    # a lower bound where asked
    w = importance_weights(trainer, sampler, torch.ones(1, 3), clip_max=3.0, clip_min=0.5)
    assert torch.allclose(w, torch.tensor([[3.0, math.exp(0.5), 0.5]]))


def test_padding_and_nan_count_as_agreement():
    trainer = torch.tensor([[0.0, -5.0, 0.0]])
    sampler = torch.tensor([[float("nan"), -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w = importance_weights(trainer, sampler, mask)
    assert torch.allclose(w, torch.tensor([[1.0, math.exp(-4.0), 1.0]]))


def test_mask_and_sequence_modes():
    trainer = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    sampler = torch.tensor([[-2.0, 0.0], [-0.5, -0.5]])
    mask = torch.ones(2, 2)
    w = importance_weights(trainer, sampler, mask, mode="token_mask", clip_max=3.0)
    assert torch.allclose(w, torch.tensor([[0.0, 1.0], [math.exp(0.5)] * 2]))
    w = importance_weights(trainer, sampler, mask, mode="sequence_truncate", clip_max=3.0)
    assert w.shape == (2, 1) and torch.allclose(w, torch.tensor([[3.0], [math.exp(1.0)]]))
    w = importance_weights(trainer, sampler, mask, mode="sequence_mask", clip_max=2.0)
    assert torch.allclose(w, torch.tensor([[0.0], [0.0]]))
    with pytest.raises(ValueError):
        importance_weights(trainer, sampler, mask, mode="tis")


def test_no_gradient_through_weights():
    trainer = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    sampler = torch.tensor([[-1.5, -1.0]])
    w = importance_weights(trainer, sampler, torch.ones(1, 2))
    assert not w.requires_grad
    loss = (w * trainer).sum()  # the weight multiplies the per-token loss as a constant
    loss.backward()
    assert torch.allclose(trainer.grad, w)
