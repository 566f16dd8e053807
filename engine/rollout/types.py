"""What crosses the rollout service's boundary: plain dataclasses of lists, cheap to pickle across Ray."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RolloutRequest:
    """``n`` completions for each prompt, generated with ``group``'s adapter.

    What ``seed`` fixes depends on the backend. ``vllm`` seeds each completion from (``seed``,
    prompt, sample) alone, so its random draws do not depend on the rest of the batch (though a
    different batch may round differently in vLLM's kernels). ``hf`` runs the requests that share
    sampling settings and ``max_new_tokens`` as one batch seeded from all their seeds in order, so a
    request's completions repeat only when its whole batch does (the same step of the same
    population, on the same adapter versions, hardware and software). Greedy requests use no seed.
    """

    group: str
    prompt_ids: list[list[int]]  # one token list per prompt (chat template applied, not padded)
    n: int  # completions per prompt (group_size); results are prompt-major
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # sampling seed: per completion (vllm) or mixed into its batch's seed (hf); see above
    greedy: bool = False


@dataclass
class RolloutResult:
    """Completions of one request, prompt-major: entry ``i * n + j`` is sample ``j`` of prompt ``i``."""

    group: str
    adapter_version: int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # eos included when the model stopped; no padding
    logprobs: list[list[float]]  # sampler's log-probs of each completion token (after temperature)
    finish_reasons: list[str]  # "stop" | "length"
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
