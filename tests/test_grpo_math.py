"""GRPO math checked against values computed by hand."""

import math

import pytest
import torch

from engine.trainer.grpo import (
    LOSS_AGGREGATION,
    clipped_token_loss,
    completion_logprobs,
    group_advantages,
    k3_kl,
)


def test_group_advantages_by_hand():
    # two prompts, G = 2: group 1 rewards (1, 0), group 2 rewards (2, 2)
    r = torch.tensor([1.0, 0.0, 2.0, 2.0])
    a = group_advantages(r, 2, "group")
    # group 1: mean .5, unbiased std sqrt(.5) = .7071 -> +-.5 / (.7071 + 1e-4)
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert a.tolist() == pytest.approx([expected, -expected, 0.0, 0.0], abs=1e-6)


def test_batch_scaling_uses_one_std():
    r = torch.tensor([1.0, 0.0, 2.0, 2.0])
    a = group_advantages(r, 2, "batch")
    std = torch.tensor([1.0, 0.0, 2.0, 2.0]).std().item()  # 0.9574
    assert a.tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0], abs=1e-6)


def test_no_scaling_is_dr_grpo():
    r = torch.tensor([3.0, 1.0, 0.0, 4.0])
    assert group_advantages(r, 2, "none").tolist() == [1.0, -1.0, -2.0, 2.0]


def test_advantage_sign_follows_reward():
    r = torch.tensor([0.0, 1.0, 0.0, 0.0])
    a = group_advantages(r, 4, "group")
    assert a[1] > 0 and (a[[0, 2, 3]] < 0).all()


NAN = math.nan


def _over_scorable_rows(groups: list[list[float]], scale_rewards: str) -> list[list[float]]:
    """Advantages by hand from each group's scorable rewards alone (groups of any size)."""
    every = torch.tensor([r for g in groups for r in g])
    out = []
    for g in groups:
        r = torch.tensor(g)
        centred = r - r.mean()
        std = {"group": r.std(), "batch": every.std(), "none": None}[scale_rewards]
        out.append((centred if std is None else centred / (std + 1e-4)).tolist())
    return out


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_an_unscorable_completion_gets_zero_advantage_and_leaves_the_baseline_alone(scale_rewards):
    """As TRL: a NaN reward (every reward function returned None) is left out of its group's mean and
    std, and out of the batch std; its advantage is 0."""
    r = torch.tensor([1.0, NAN, 0.0, 2.0, 2.0, 5.0])  # G = 3: the first group's second row is unscorable
    a = group_advantages(r, 3, scale_rewards)
    first, second = _over_scorable_rows([[1.0, 0.0], [2.0, 2.0, 5.0]], scale_rewards)
    assert a[1].item() == 0.0
    assert a[[0, 2]].tolist() == pytest.approx(first, abs=1e-6)
    assert a[3:].tolist() == pytest.approx(second, abs=1e-6)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_a_group_with_no_scorable_completion_has_zero_advantages(scale_rewards):
    r = torch.tensor([NAN, NAN, 3.0, 1.0])
    a = group_advantages(r, 2, scale_rewards)
    assert a[:2].tolist() == [0.0, 0.0]
    assert a[2:].tolist() == pytest.approx(_over_scorable_rows([[3.0, 1.0]], scale_rewards)[0], abs=1e-6)
    assert group_advantages(torch.full((4,), NAN), 2, scale_rewards).tolist() == [0.0] * 4
    # a group's one scorable row is its own mean: 0 as well (TRL: its NaN std zeroes it)
    assert group_advantages(torch.tensor([NAN, 4.0, 1.0, 2.0]), 2, scale_rewards)[:2].tolist() == [0.0, 0.0]


def test_nanstd_without_nans_is_std_bit_for_bit():
    """So advantages of batches without unscorable rows are exactly what they were before NaN handling."""
    from engine.trainer.grpo import nanstd

    torch.manual_seed(0)
    for rows, cols in [(4, 8), (16, 2), (1, 64), (3, 5)]:
        x = torch.randn(rows, cols) * 10
        assert torch.equal(nanstd(x, dim=1), x.std(dim=1))
    x = torch.tensor([[1.0, NAN, 3.0, NAN], [NAN] * 4, [2.0, NAN, NAN, NAN]])
    assert nanstd(x, dim=1).tolist() == pytest.approx([torch.tensor([1.0, 3.0]).std().item(), 0.0, 0.0])


def test_k3_kl_by_hand():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    # d = ref - logp = log(.5); exp(d) - d - 1 = .5 - log(.5) - 1
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    assert k3_kl(logp, logp).item() == 0.0


def test_clipped_loss_by_hand():
    old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = clipped_token_loss(logp, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # positive advantage, ratio 1.5 -> clipped at 1.28: -min(1.5, 1.28) = -1.28
    # negative advantage, ratio 0.5 -> clip(.5) = .8: -min(-.5, -.8) = .8
    assert loss.squeeze().tolist() == pytest.approx([-1.28, 0.8], abs=1e-6)
    assert clipped.squeeze().tolist() == [1.0, 1.0]
    loss2, clipped2 = clipped_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([2.0]), 0.2, 0.2)
    assert loss2.item() == pytest.approx(-2.0) and clipped2.item() == 0.0


def test_loss_aggregations_by_hand():
    loss = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # grpo: mean of per-sequence means = (2 + 2) / 2
    assert LOSS_AGGREGATION["grpo"](loss, mask, 4).item() == pytest.approx(2.0)
    # dr_grpo: sum / (B * max_len) = 6 / 8
    assert LOSS_AGGREGATION["dr_grpo"](loss, mask, 4).item() == pytest.approx(0.75)
    # dapo: sum / tokens = 6 / 3
    assert LOSS_AGGREGATION["dapo"](loss, mask, 4).item() == pytest.approx(2.0)
    loss[0, 1] = 6.0  # longer sequence weighs more under dapo than grpo
    assert LOSS_AGGREGATION["dapo"](loss, mask, 4).item() == pytest.approx(3.0)
    assert LOSS_AGGREGATION["grpo"](loss, mask, 4).item() == pytest.approx(2.75)


def test_gradient_pushes_up_positive_advantage_tokens():
    logits = torch.zeros(1, 4, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1]  # log-prob of token 0, [1, 1]
    loss, _ = clipped_token_loss(logp, logp.detach(), torch.tensor([1.0]), 0.2, 0.2)
    loss.sum().backward()
    assert logits.grad[0, 0] < 0  # descending the loss raises token 0's logit


def test_completion_logprobs_ignores_left_padding():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    prompt, completion = [5, 6, 7], [8, 9]
    alone = completion_logprobs(model, torch.tensor([prompt + completion]), torch.ones(1, 5, dtype=torch.long), 3, 1.0)
    padded = completion_logprobs(
        model, torch.tensor([[0, 0] + prompt + completion]), torch.tensor([[0, 0, 1, 1, 1, 1, 1]]), 5, 1.0
    )
    assert torch.allclose(alone, padded, atol=1e-5)
    logits = model(torch.tensor([prompt + completion])).logits[0]
    by_hand = [torch.log_softmax(logits[2], -1)[8].item(), torch.log_softmax(logits[3], -1)[9].item()]
    assert alone[0].tolist() == pytest.approx(by_hand, abs=1e-5)


def test_rows_sharing_a_prompt_share_its_forward_with_the_same_logprobs_and_gradients():
    """A GRPO group's samples share one prompt forward (KV cache gathered per row); values and LoRA
    gradients equal a full forward of every row, left padding and an unshared row included."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import engine.trainer.grpo as grpo

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    prompts = torch.randint(1, 40, (3, 7))
    ids = torch.cat([prompts.repeat_interleave(4, 0), torch.randint(1, 40, (12, 5))], 1)  # [12, 7+5]
    attn = torch.ones_like(ids)
    ids[4:8, :2], attn[4:8, :2] = 0, 0  # the second prompt is left-padded
    ids[11, :7] = torch.randint(1, 40, (7,))  # one row with a prompt of its own
    assert grpo.distinct_rows(ids[:, :7])[0].tolist() == [0, 4, 8, 11]

    def run(share: bool):
        model.zero_grad()
        logp = completion_logprobs(model, ids, attn, 7, 0.7, share_prompt=share)  # [12, 5]
        (logp * torch.linspace(-1, 1, 5)).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared, shared_grads = run(True)
    full, full_grads = run(False)  # every row its own prompt: one plain forward
    assert torch.allclose(shared, full, atol=1e-5)
    assert shared_grads.keys() == full_grads.keys() and len(full_grads) > 0
    for name, g in full_grads.items():
        assert torch.allclose(shared_grads[name], g, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_aggregation_weights_let_micro_batches_add_up_to_the_full_loss(loss_type):
    from engine.trainer.grpo import aggregation_weights

    torch.manual_seed(0)
    loss = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1.0
    full = LOSS_AGGREGATION[loss_type](loss, mask, 5)
    w = aggregation_weights(loss_type, mask, 5)
    chunks = sum((loss[i : i + 4] * w[i : i + 4]).sum() for i in range(0, 6, 4))
    assert float(chunks) == pytest.approx(float(full), abs=1e-6)
