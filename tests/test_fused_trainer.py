"""The fused multi-LoRA trainer (engine/trainer) against the per-group PEFT training it replaces.

Every number is compared with how a group trained alone before the fused trainer (``GroupActor.learn``): ``get_peft_model`` on the group's own
copy of the base (``torch.manual_seed(seed)`` init), AdamW, ``clip_grad_norm_``, on the same data.
A small random Llama built here (no files, no network); one thread.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_fused_trainer.py
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import pytest
import torch

from engine.models.base import peft_lora_config
from engine.trainer.fused import (
    GroupBatch,
    LossSettings,
    Piece,
    assemble,
    fused_grpo_step,
    plan_micro_batches,
    routed_logprobs,
)
from engine.trainer.grpo import aggregation_weights, clipped_token_loss, completion_logprobs, k3_kl, masked_mean
from engine.trainer.importance import importance_weights
from engine.trainer.multi_lora import MultiLoRALinear, MultiLoRAModel, Routing, row_segments
from engine.trainer.slots import (
    SlotHParams,
    copy_slot,
    get_state,
    load_state_dict,
    save_slot,
    set_hparams,
    set_state,
    state_dict,
)

torch.set_num_threads(1)
MAX = {}  # measured max differences, printed at the end (pytest -s)


@dataclass
class Spec:
    name: str
    seed: int
    lora: dict
    hp: SlotHParams
    loss: LossSettings
    prompts: int
    samples: int
    P: int
    L: int
    adv_scale: float


SPECS = [
    Spec(
        "g0",
        11,
        dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"),
        SlotHParams(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0, max_grad_norm=1.0),
        LossSettings("grpo", max_len=6, beta=0.1, num_iterations=2),
        prompts=3,
        samples=2,
        P=5,
        L=6,
        adv_scale=1.0,
    ),
    Spec(
        "g1",
        12,
        dict(r=8, alpha=16, dropout=0.0, target_modules="all-linear"),
        SlotHParams(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01, max_grad_norm=0.5),
        LossSettings("dr_grpo", max_len=8, temperature=0.7, is_correction=True, is_cap=1.5),
        prompts=2,
        samples=3,
        P=8,
        L=8,
        adv_scale=5.0,
    ),
    Spec(
        "g2",
        13,
        dict(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        SlotHParams(lr=5e-2, betas=(0.9, 0.99), weight_decay=0.0, max_grad_norm=1.0),
        LossSettings("dapo", max_len=5, epsilon_high=0.28),
        prompts=2,
        samples=2,
        P=3,
        L=5,
        adv_scale=0.1,
    ),
    # g2's twin in shape (rank, targets, rows), other settings: the two share one batched GEMM pair
    Spec(
        "g3",
        14,
        dict(r=2, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        SlotHParams(lr=2e-2, betas=(0.8, 0.9), weight_decay=0.1, max_grad_norm=2.0),
        LossSettings("grpo", max_len=6, beta=0.05),
        prompts=1,
        samples=4,
        P=4,
        L=6,
        adv_scale=2.0,
    ),
]


@pytest.fixture(scope="module")
def base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def make_batch(base, spec: Spec, seed: int) -> GroupBatch:
    """Like ``GroupActor._pack``: ``samples`` completions per prompt, prompts left-padded to P (the first
    is P long), completions right-padded to L; sampler log-probs = the base's + noise (some clipping)."""
    g = torch.Generator().manual_seed(seed)
    ids, attn, mask = [], [], []
    for i in range(spec.prompts):
        plen = spec.P if i == 0 else int(torch.randint(2, spec.P + 1, (1,), generator=g))
        prompt = torch.randint(1, 300, (plen,), generator=g).tolist()
        for j in range(spec.samples):
            clen = spec.L if i == j == 0 else int(torch.randint(1, spec.L + 1, (1,), generator=g))
            ids.append(
                [0] * (spec.P - plen)
                + prompt
                + torch.randint(1, 300, (clen,), generator=g).tolist()
                + [0] * (spec.L - clen)
            )
            attn.append([0] * (spec.P - plen) + [1] * (plen + clen) + [0] * (spec.L - clen))
            m = [1.0] * clen + [0.0] * (spec.L - clen)
            if clen > 3 and j == 1:
                m[1] = 0.0  # an env observation token inside a multi-turn completion
            mask.append(m)
    ids, attn, mask = torch.tensor(ids), torch.tensor(attn), torch.tensor(mask)
    with torch.no_grad():
        logp = completion_logprobs(base, ids, attn, spec.P, spec.loss.temperature, share_prompt=False)
    old = (logp + 0.3 * torch.randn(logp.shape, generator=g)) * mask
    adv = torch.randn(ids.size(0), generator=g) * spec.adv_scale
    return GroupBatch(spec.name, ids, attn, spec.P, mask, old, adv, spec.loss)


def fused_model(base, specs: list[Spec]) -> MultiLoRAModel:
    model = MultiLoRAModel(copy.deepcopy(base))
    for s in specs:
        model.add_slot(s.name, s.lora, s.seed, s.hp)
    return model


# --- the reference: a group alone, as the former GroupActor.learn did it, with a PEFT model -------


@dataclass
class Reference:
    model: object
    optimizer: torch.optim.AdamW
    logp: torch.Tensor
    loss: float
    kl: float
    clip_ratio: float
    grad_norm: float
    is_weight_mean: float


def reference_learn(base, spec: Spec, b: GroupBatch, share_prompt: bool) -> Reference:
    from peft import get_peft_model

    torch.manual_seed(spec.seed)  # as GroupActor.__init__
    model = get_peft_model(copy.deepcopy(base), peft_lora_config(**spec.lora))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.hp.lr, betas=spec.hp.betas, weight_decay=spec.hp.weight_decay)
    lo, mask = b.loss, b.mask
    weights = aggregation_weights(lo.loss_type, mask, lo.max_len)
    chunks = [slice(0, mask.size(0))]

    def logprobs(sl):
        return completion_logprobs(
            model, b.input_ids[sl], b.attention_mask[sl], b.prompt_len, lo.temperature, share_prompt=share_prompt
        )

    ref_logp = is_weights = None
    old = b.old_logp
    if lo.beta > 0:
        with torch.no_grad(), model.disable_adapter():
            ref_logp = torch.cat([logprobs(sl) for sl in chunks])
    if lo.is_correction:
        with torch.no_grad():
            old = torch.cat([logprobs(sl) for sl in chunks])
        is_weights = importance_weights(old, b.old_logp, mask, lo.is_mode, lo.is_cap)
    model.train()
    for _ in range(lo.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        parts = []
        for sl in chunks:
            logp = logprobs(sl)
            token_loss, clipped = clipped_token_loss(logp, old[sl], b.advantages[sl], lo.epsilon_low, lo.epsilon_high)
            if is_weights is not None:
                token_loss = token_loss * is_weights[sl]
            kl = k3_kl(logp, ref_logp[sl]) if ref_logp is not None else torch.zeros_like(logp)
            loss = ((token_loss + lo.beta * kl) * weights[sl]).sum()
            loss.backward()
            parts.append((logp.detach(), clipped, kl.detach(), loss.detach()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, spec.hp.max_grad_norm))
        optimizer.step()
    logp, clipped, kl = (torch.cat([p[i] for p in parts]) for i in range(3))
    return Reference(
        model,
        optimizer,
        logp,
        float(sum(p[3] for p in parts)),
        masked_mean(kl, mask),
        masked_mean(clipped, mask),
        grad_norm,
        masked_mean(is_weights.expand_as(mask), mask) if is_weights is not None else math.nan,
    )


def peft_named(model, what: str) -> dict[str, torch.Tensor]:
    """LoRA weights (``what='data'``) or gradients of a PEFT model by PEFT state-dict key."""
    return {n.replace(".default", ""): getattr(p, what) for n, p in model.named_parameters() if p.requires_grad}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (absolute where b is 0)."""
    return (
        float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) if b.abs().max() > 0 else float((a - b).abs().max())
    )


def note(key: str, value: float) -> None:
    MAX[key] = max(MAX.get(key, 0.0), value)


# --- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report_max_differences():
    """Prints what the comparisons measured when the module is done (visible with ``-s``)."""
    yield
    print("\nmeasured max differences:", {k: f"{v:.2e}" for k, v in sorted(MAX.items())})


@pytest.fixture(scope="module")
def batches(base):
    return [make_batch(base, s, 100 + i) for i, s in enumerate(SPECS)]


@pytest.fixture(scope="module")
def references(base, batches):
    return {share: [reference_learn(base, s, b, share) for s, b in zip(SPECS, batches)] for share in (True, False)}


@pytest.mark.parametrize("share_prompt", [True, False])
@pytest.mark.parametrize("token_budget", [None, 50, 100])
def test_fused_step_equals_separate_peft_steps(base, batches, references, share_prompt, token_budget):
    """Four groups (grpo + KL + 2 iterations, dr_grpo + IS correction + temperature, dapo on q/v only, and
    g2's twin in shape, whose rows go through one batched GEMM with g2's; different P, L, ranks, lrs,
    advantage scales) in one fused step: each gets exactly its own update."""
    if token_budget is not None:  # 50 really splits groups, 100 mixes whole groups in one micro-batch
        plan = plan_micro_batches(
            [(g, b.mask.size(0), b.prompt_len, b.mask.size(1), g) for g, b in enumerate(batches)], token_budget
        )
        if token_budget == 50:
            assert len(plan) > len(batches) and any(
                p.hi - p.lo < b.mask.size(0) for mb in plan for p in mb for b in [batches[p.group]]
            )
        else:
            assert any(len({p.group for p in mb}) > 1 for mb in plan)
    model = fused_model(base, SPECS)
    results = fused_grpo_step(model, batches, token_budget=token_budget, share_prompt=share_prompt)
    for spec, res, ref in zip(SPECS, results, references[share_prompt]):
        slot = model.slots[spec.name]
        assert not res.skipped
        note("logp_abs", float((res.logp - ref.logp).abs().max()))
        assert torch.allclose(res.logp, ref.logp, atol=1e-5, rtol=0)
        grads = peft_named(ref.model, "grad")
        for m, a, bb in zip(slot.modules, slot.lora_A, slot.lora_B):
            for which, p in (("lora_A", a), ("lora_B", bb)):
                key = f"base_model.model.{m}.{which}.weight"
                note("grad_rel", rel(p.grad, grads[key]))
                assert rel(p.grad, grads[key]) <= 1e-4, key
        after = peft_named(ref.model, "data")
        for key, value in state_dict(slot).items():
            note("weight_abs", float((value - after[key]).abs().max()))
            assert torch.allclose(value, after[key], atol=1e-5, rtol=1e-4), key
        # the optimizer moments too, parameter by parameter (same order as PEFT's)
        for mine, theirs in zip(
            slot.optimizer.state_dict()["state"].values(), ref.optimizer.state_dict()["state"].values()
        ):
            assert torch.allclose(mine["exp_avg"], theirs["exp_avg"], atol=1e-7, rtol=1e-4)
            assert float(mine["step"]) == float(theirs["step"]) == spec.loss.num_iterations
        for field in ("loss", "kl", "clip_ratio", "grad_norm"):
            note(f"{field}_rel", abs(getattr(res, field) - getattr(ref, field)) / max(abs(getattr(ref, field)), 1e-12))
            assert getattr(res, field) == pytest.approx(getattr(ref, field), rel=1e-4, abs=1e-7), field
        if spec.loss.is_correction:
            assert res.is_weight_mean == pytest.approx(ref.is_weight_mean, rel=1e-6) and res.is_weight_mean != 1.0
        else:
            assert math.isnan(res.is_weight_mean)
    assert results[0].kl > 0 and results[0].clip_ratio > 0 and results[2].clip_ratio > 0


def _poison(model: MultiLoRAModel, b: GroupBatch, fault: str) -> GroupBatch:
    if fault == "nan_advantages":
        adv = b.advantages.clone()
        adv[1] = math.nan
        adv[2] = math.inf
        return replace(b, advantages=adv)
    if fault == "overflow_forward":  # finite weights whose forward overflows: found after the forward
        with torch.no_grad():
            for p in model.slots[b.slot].lora_B:
                p.fill_(1e30)
        return b
    # "explodes_in_pass_1": pass 0 is fine, its step blows the weights up; found in pass 1
    set_hparams(model.slots[b.slot], lr=1e20)
    return replace(b, loss=replace(b.loss, num_iterations=2))


@pytest.mark.parametrize("fault", ["nan_advantages", "overflow_forward", "explodes_in_pass_1"])
def test_non_finite_group_is_skipped_alone(base, batches, fault):
    """g1 fails: g0 and g2 end bit-identical to a fused step without g1; g1's slot is untouched."""
    g0, g1, g2 = SPECS[:3]
    alone = fused_model(base, [g0, g2])
    expected = fused_grpo_step(alone, [batches[0], batches[2]], token_budget=50)
    model = fused_model(base, SPECS[:3])
    bad = _poison(model, batches[1], fault)
    before = get_state(model.slots["g1"])
    results = fused_grpo_step(model, [batches[0], bad, batches[2]], token_budget=50)
    assert results[1].skipped and not results[0].skipped and not results[2].skipped
    assert {
        "nan_advantages": "non-finite advantages",
        "overflow_forward": "(pass 0)",
        "explodes_in_pass_1": "(pass 1)",
    }[fault] in results[1].reason
    for res, exp in zip((results[0], results[2]), expected):
        assert (res.loss, res.grad_norm, res.kl, res.clip_ratio) == (exp.loss, exp.grad_norm, exp.kl, exp.clip_ratio)
        assert torch.equal(res.logp, exp.logp)
    for name in ("g0", "g2"):
        for key, value in state_dict(alone.slots[name]).items():
            assert torch.equal(value, state_dict(model.slots[name])[key]), (name, key)
        for mine, theirs in zip(
            model.slots[name].optimizer.state_dict()["state"].values(),
            alone.slots[name].optimizer.state_dict()["state"].values(),
        ):
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    after = get_state(model.slots["g1"])
    assert all(torch.equal(before.adapter[k], after.adapter[k]) for k in before.adapter)
    assert after.optimizer["state"] == {}  # never stepped


@pytest.mark.parametrize(
    "targets", ["all-linear", ["q_proj", "v_proj"], ["down_proj", "lm_head"], r".*\.layers\.1\.self_attn\.(k|o)_proj"]
)
def test_targets_state_dict_and_init_equal_peft(base, targets):
    """Same modules, same keys and shapes, and the same initial weights as ``torch.manual_seed(seed);
    get_peft_model(base, cfg)`` (what GroupActor does today). With ``lm_head`` targeted PEFT's "auto"
    also saves the *base* LM head (in case the vocabulary was resized); a slot is the adapter only."""
    from peft import get_peft_model, get_peft_model_state_dict

    lora = dict(r=4, alpha=8, dropout=0.0, target_modules=targets)
    torch.manual_seed(3)
    peft_model = get_peft_model(copy.deepcopy(base), peft_lora_config(**lora))
    model = MultiLoRAModel(copy.deepcopy(base))
    slot = model.add_slot("s", lora, seed=3, hparams=SlotHParams(lr=1e-3))
    assert slot.modules == list(peft_model.base_model.targeted_module_names)
    theirs, mine = get_peft_model_state_dict(peft_model, save_embedding_layers=False), state_dict(slot)
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_saved_slot_loads_in_peft_and_in_the_rollout_service(base, batches, tmp_path):
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict

    model = fused_model(base, SPECS)
    fused_grpo_step(model, batches)  # B != 0 from here
    spec, b = SPECS[1], batches[1]
    slot = model.slots[spec.name]
    save_slot(slot, tmp_path / "g1")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "g1"))
    with torch.no_grad():
        theirs = completion_logprobs(peft_model, b.input_ids, b.attention_mask, b.prompt_len, b.loss.temperature, False)
        mb = assemble([b], [Piece(0, 0, b.mask.size(0), slot.sid)], torch.device("cpu"))
        mine = routed_logprobs(model, mb, share_prompt=True)
    note("saved_logp_abs", float((mine - theirs).abs().max()))
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=0)
    # HFRollout.publish's check: the state dict fits a named adapter of a multi-adapter PEFT model
    multi = get_peft_model(copy.deepcopy(base), peft_lora_config(**SPECS[0].lora), adapter_name="g0")
    multi.add_adapter("g1", peft_lora_config(**spec.lora))
    result = set_peft_model_state_dict(multi, state_dict(slot), adapter_name="g1")
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k and ".g1." in k]
    # back into a fresh slot from the written file (as a checkpoint is restored), and a foreign one refused
    from safetensors.torch import load_file

    other = fused_model(base, [replace(spec, seed=99)])
    load_state_dict(other.slots[spec.name], load_file(str(tmp_path / "g1" / "adapter_model.safetensors")))
    assert all(torch.equal(v, state_dict(slot)[k]) for k, v in state_dict(other.slots[spec.name]).items())
    with pytest.raises(ValueError, match="does not fit slot"):
        load_state_dict(other.slots[spec.name], {"base_model.model.nope.lora_A.weight": torch.zeros(1)})


def test_copy_slot_checkpoint_and_per_slot_lr(base, batches):
    a_spec = SPECS[0]
    b_spec = replace(a_spec, name="b", seed=21, hp=replace(a_spec.hp, lr=2e-2))
    b_batch = replace(batches[0], slot="b")

    def history():
        m = fused_model(base, [a_spec, b_spec])
        fused_grpo_step(m, [batches[0], b_batch])
        return m

    model, twin = history(), history()
    a, b = model.slots["g0"], model.slots["b"]
    copy_slot(a, b)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params))
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert b.optimizer.param_groups[0]["lr"] == 2e-2  # b keeps its own hyper-parameters
    with torch.no_grad():
        b.lora_B[0].add_(1.0)  # no tensor shared
    assert not torch.equal(a.lora_B[0], b.lora_B[0])
    assert a.optimizer.state[a.lora_B[0]]["exp_avg"].data_ptr() != b.optimizer.state[b.lora_B[0]]["exp_avg"].data_ptr()
    # a checkpoint round trip
    state = get_state(b)
    set_state(twin.slots["b"], state)
    assert all(torch.equal(x, y) for x, y in zip(twin.slots["b"].params, b.params))
    # lr 0 on b: b does not move, g0's update is bit-identical to the twin's (b at its own lr)
    set_hparams(b, lr=0.0)
    assert a.optimizer.param_groups[0]["lr"] == a_spec.hp.lr and b.optimizer.param_groups[0]["lr"] == 0.0
    frozen = [p.detach().clone() for p in b.params]
    fused_grpo_step(model, [batches[0], b_batch])
    fused_grpo_step(twin, [batches[0], b_batch])
    assert all(torch.equal(x, y) for x, y in zip(b.params, frozen))
    assert all(torch.equal(x, y) for x, y in zip(a.params, twin.slots["g0"].params))


def test_shared_prompt_forward_never_merges_rows_of_different_slots(base, batches):
    """Two slots on the very same rows (same prompts): the shared-prompt forward dedupes on (slot, prompt),
    so each keeps its own prompt KV cache; a dedupe on the prompt alone would give the second slot the
    first one's cache."""
    b2 = replace(batches[0], slot="b")
    model = fused_model(base, [SPECS[0], replace(SPECS[0], name="b", seed=5)])
    with torch.no_grad():
        for name, scale in (("g0", 0.05), ("b", -0.05)):  # B != 0 and different per slot
            for p in model.slots[name].lora_B:
                p.normal_(0, abs(scale), generator=torch.Generator().manual_seed(int(scale * 100) + 7))
        n = batches[0].mask.size(0)
        mb = assemble(
            [batches[0], b2],
            [Piece(0, 0, n, model.slots["g0"].sid), Piece(1, 0, n, model.slots["b"].sid)],
            model.device,
        )
        shared, full = routed_logprobs(model, mb, share_prompt=True), routed_logprobs(model, mb, share_prompt=False)
    note("shared_vs_full_logp_abs", float((shared - full).abs().max()))
    assert torch.allclose(shared, full, atol=1e-5, rtol=0)
    assert not torch.allclose(full[:n], full[n:], atol=1e-3)  # the two slots really differ


def test_one_base_copy_whatever_the_number_of_slots(base):
    def storages(model):
        return {p.untyped_storage().data_ptr() for n, p in model.named_parameters() if "lora_" not in n}

    def base_numel(model):
        return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)

    one, six = MultiLoRAModel(copy.deepcopy(base)), MultiLoRAModel(copy.deepcopy(base))
    plain_six = storages(six)
    one.add_slot("s0", SPECS[0].lora, 0, SPECS[0].hp)
    for i in range(6):
        six.add_slot(f"s{i}", SPECS[i % 3].lora, i, SPECS[i % 3].hp)
    assert storages(six) == plain_six and len(storages(six)) == len(storages(one))
    assert base_numel(six) == base_numel(one) == sum(p.numel() for p in base.parameters())
    assert not any(p.requires_grad for n, p in six.named_parameters() if "lora_" not in n)
    six.remove_slot("s1")
    six.remove_slot("s4")
    assert storages(six) == plain_six and "s1" not in six.slots


def test_multi_lora_linear_rows_in_any_order_and_bf16_as_peft():
    """Unsorted rows (index path) == sorted rows (slice path); each row equals PEFT's ``lora.Linear``:
    on a float32 base as it is, on a bf16 base under bf16 autocast (what TRL's ``bf16=True`` Trainer
    runs: float32 LoRA weights, the low-rank path computed in bf16)."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        lin = torch.nn.Linear(16, 8).to(dtype).requires_grad_(False)
        layer = MultiLoRALinear(lin, Routing())
        ab = {
            sid: (torch.nn.Parameter(torch.randn(r, 16)), torch.nn.Parameter(torch.randn(8, r)))
            for sid, r in ((0, 4), (1, 2))
        }
        for sid, (a, b) in ab.items():
            layer.add(sid, a, b, 2.0 / a.size(0))
        x = torch.randn(5, 3, 16).to(dtype)
        rows = torch.tensor([1, 0, -1, 1, 0])
        layer.routing.batch, layer.routing.segments = 5, row_segments(rows)
        assert any(isinstance(sel, torch.Tensor) for _, sel in layer.routing.segments)
        y = layer(x)
        order = torch.argsort(rows, stable=True)
        layer.routing.segments = row_segments(rows[order])
        assert all(isinstance(sel, slice) for _, sel in layer.routing.segments)
        assert torch.equal(layer(x[order]), y[order])
        if dtype == torch.float32:  # and the same gradients through the index path as the slice path
            grads = []
            for rows_, x_ in ((rows, x), (rows[order], x[order])):
                layer.routing.segments = row_segments(rows_)
                for a, b in ab.values():
                    a.grad = b.grad = None
                layer(x_).pow(2).sum().backward()
                grads.append([p.grad.clone() for a, b in ab.values() for p in (a, b)])
            assert all(torch.allclose(g, h, rtol=1e-6, atol=1e-6) for g, h in zip(*grads))
        for i, sid in enumerate(rows.tolist()):
            if sid < 0:
                assert torch.equal(y[i], lin(x[i]))
                continue
            a, b = ab[sid]
            peft = PeftLinear(copy.deepcopy(lin), "s", LoraConfig(r=a.size(0), lora_alpha=2), r=a.size(0), lora_alpha=2)
            peft.lora_A["s"].float(), peft.lora_B["s"].float()  # as get_peft_model's autocast_adapter_dtype
            with torch.no_grad():
                peft.lora_A["s"].weight.copy_(a)
                peft.lora_B["s"].weight.copy_(b)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                expected = peft(x[i : i + 1])[0]
            assert torch.equal(y[i], expected), (dtype, i)


def test_batched_gemm_of_equal_slots_equals_one_slot_at_a_time():
    """Adjacent slots with as many rows and one rank take one ``bmm`` pair (a run); outputs and every
    slot's gradients equal those of each slot's rows alone, and a slot of another rank stays apart."""
    from engine.trainer.multi_lora import runs

    torch.manual_seed(2)
    lin = torch.nn.Linear(16, 8).requires_grad_(False)
    layer = MultiLoRALinear(lin, Routing())
    ranks = {0: 4, 1: 4, 2: 4, 3: 2}
    ab = {
        sid: (torch.nn.Parameter(torch.randn(r, 16)), torch.nn.Parameter(torch.randn(8, r))) for sid, r in ranks.items()
    }
    for sid, (a, b) in ab.items():
        layer.add(sid, a, b, (1.0 + sid) / a.size(0))  # a scale per slot
    rows = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, -1])
    segments = row_segments(rows)
    assert [[sid for sid, _ in run] for run in runs(segments, layer.lora_A)] == [[0, 1, 2], [3]]
    x = torch.randn(9, 5, 16)
    layer.routing.batch, layer.routing.segments = 9, segments
    layer(x).pow(2).sum().backward()
    fused = [p.grad.clone() for a, b in ab.values() for p in (a, b)]
    y = layer(x).detach()
    for a, b in ab.values():
        a.grad = b.grad = None
    alone = []
    for sid in ranks:  # each slot's rows through the layer on their own (the single-slot path)
        idx = (rows == sid).nonzero().flatten()
        layer.routing.batch, layer.routing.segments = len(idx), row_segments(torch.full((len(idx),), sid))
        out = layer(x[idx])
        assert torch.allclose(out, y[idx], atol=1e-6, rtol=1e-6)
        out.pow(2).sum().backward()
    alone = [p.grad for a, b in ab.values() for p in (a, b)]
    assert all(torch.allclose(f, g, rtol=1e-5, atol=1e-5) for f, g in zip(fused, alone))
    assert torch.equal(y[8], lin(x[8]))


def test_activation_checkpointing_gives_the_same_update(base, batches):
    """With every decoder layer recomputed in the backward (``enable_checkpointing``), the fused step's
    log-probs and every slot's updated weights are those of the step that keeps its activations."""
    plain, ckpt = fused_model(base, SPECS), fused_model(base, SPECS)
    ckpt.enable_checkpointing()
    assert not any(m.training for m in ckpt.modules() if type(m).__name__.endswith("Attention"))  # dropout stays off
    expected = fused_grpo_step(plain, batches, token_budget=100, share_prompt=False)
    got = fused_grpo_step(ckpt, batches, token_budget=100, share_prompt=False)
    for e, g in zip(expected, got):
        assert not g.skipped and torch.allclose(g.logp, e.logp, atol=1e-6, rtol=0)
        assert g.grad_norm == pytest.approx(e.grad_norm, rel=1e-5)
    for name in plain.slots:
        for p, q in zip(plain.slots[name].params, ckpt.slots[name].params):
            assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)
    # and the recompute really ran: a checkpointed layer keeps no activations of its own
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.base.modules())
