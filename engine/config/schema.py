"""The run config: typed, one description per field, unknown keys rejected.

``RunConfig`` is what a YAML file in ``configs/`` validates into. Per-group ``grpo:`` and ``lora:``
blocks are *partial overrides* merged over the run-level blocks before validation, so a group may
say ``grpo: {lr: 1e-3}`` and inherit everything else. Components never receive this object:
builders in ``engine/`` turn it into plain keyword arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _refuse_moved(data: Any, key: str, where: str) -> Any:
    """A field that no longer exists gets a message saying where it went, not just "unknown key"."""
    if isinstance(data, dict) and key in data:
        raise ValueError(f"{key}: {where}")
    return data


class TagFormat(_Strict):
    """The answer format a group's prompts ask for and its built-in rewards check."""

    reasoning_start: str = Field(REASONING_START, description="Tag that opens the reasoning.")
    reasoning_end: str = Field(REASONING_END, description="Tag that closes the reasoning.")
    solution_start: str = Field(SOLUTION_START, description="Tag that opens the final answer.")
    solution_end: str = Field(SOLUTION_END, description="Tag that closes the final answer.")


class GRPOConfig(_Strict):
    """GRPO hyper-parameters of one group (run-level defaults, overridable per group)."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(
            data,
            "micro_batch_size",
            "moved to training.micro_batch_tokens (one trainer packs every group's rows into micro-batches by tokens)",
        )

    prompts_per_step: int = Field(4, ge=1, description="Prompts sampled from the env per step.")
    group_size: int = Field(8, ge=2, description="Completions per prompt (G); advantages are relative within these.")
    max_prompt_length: int = Field(
        512, ge=1, description="Longest prompt in tokens; longer prompts are an error, never truncated."
    )
    max_completion_length: int = Field(64, ge=1, description="Most new tokens per completion.")
    temperature: float = Field(
        1.0, gt=0, description="Sampling temperature for rollouts (also applied to the trainer's logits)."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for rollouts.")
    lr: float = Field(
        5e-5,
        ge=0,
        description="AdamW learning rate of the LoRA parameters (LoRA GRPO on real models: ~1e-5..2e-4; builtin:tiny: 1e-3..3e-3).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clipping threshold.")
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient (k3 estimator) to the base with the adapter off; 0 skips the reference pass (TRL's default).",
    )
    epsilon_low: float = Field(0.2, ge=0, description="Lower clip of the importance ratio: 1 - epsilon_low.")
    epsilon_high: float = Field(
        0.2, ge=0, description="Upper clip of the importance ratio: 1 + epsilon_high (DAPO clip-higher uses 0.28)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage scaling: std of the prompt's group, of the whole batch, or none (Dr. GRPO)."
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="Loss aggregation, as TRL: per-sequence mean (grpo), / (B * max_completion_length) (dr_grpo), per-token mean (dapo).",
    )
    num_iterations: int = Field(1, ge=1, description="Optimizer steps per rollout batch (mu in the GRPO paper).")
    vllm_importance_sampling_correction: bool = Field(
        False,
        description="Truncated importance sampling (TRL's option of the same name): the ratio is taken against the trainer's own old log-probs and each token's loss is weighted by exp(trainer_old - sampler), capped.",
    )
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        Field(
            "token_truncate",
            description="Per-token or per-sequence weights; clamp them at the cap or drop tokens beyond it (as TRL).",
        )
    )
    vllm_importance_sampling_cap: float = Field(3.0, gt=0, description="Upper bound of the importance weight.")


class LoraConfig(_Strict):
    """LoRA adapter shape of one group (run-level defaults, overridable per group)."""

    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get adapters; 'all-linear' as in PEFT."
    )


class RewardSpec(_Strict):
    """One reward function of a group."""

    name: str = Field(
        description="A built-in name (format_exact, format_approx, answer_exact, answer_numeric, length_penalty, code_exec, env_reward) or 'module:function' / 'path/file.py:function'."
    )
    weight: float = Field(1.0, description="Weight in the total reward (weighted sum).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a built-in, or for a 'module:function' factory."
    )


class ArithmeticEnvConfig(_Strict):
    """The built-in, offline arithmetic word-problem task."""

    type: Literal["arithmetic"] = Field("arithmetic", description="Env kind.")
    difficulty: int = Field(1, ge=1, le=4, description="1: single-digit sums ... 4: two operations up to 30.")
    system_prompt: str | None = Field(
        None, description="System prompt; None uses the task's default, built from the group's tags."
    )


class DomainEnvConfig(_Strict):
    """Built-in, offline domain tasks with verifiable answers (envs/medical.py, legal.py, financial.py)."""

    type: Literal["medical", "legal", "financial"] = Field(description="Domain.")
    difficulty: int = Field(
        1,
        ge=0,
        le=3,
        description="0: facts in the prompt, answer read or picked from them; 1 (direct formulas) .. 3 (multi-step).",
    )
    language: Literal["en", "vi"] = Field(
        "en", description="Language of questions and system prompt (English or Vietnamese)."
    )
    system_prompt: str | None = Field(
        None, description="System prompt; None uses the domain's default, built from the group's tags."
    )


class CodeEnvConfig(_Strict):
    """Built-in "write a strategy function" task (envs/code_task.py); pair it with the ``code_exec`` reward,
    which runs completions in a sandboxed process (rewards/sandbox.py)."""

    type: Literal["code"] = Field(description="Env kind.")
    difficulty: int = Field(1, ge=1, le=3, description="1: list puzzles .. 3: small game search.")
    system_prompt: str | None = Field(None, description="System prompt; None uses the task's default.")


class DatasetEnvConfig(_Strict):
    """Rows from a local JSONL/JSON/CSV/Parquet file or a `datasets.save_to_disk` directory."""

    type: Literal["dataset"] = Field(description="Env kind.")
    path: str = Field(description="Local file or directory (relative paths are relative to the config file).")
    prompt_column: str | None = Field(None, description="Column with the prompt; default 'prompt', else 'question'.")
    answer_column: str = Field("answer", description="Column with the verifiable answer.")
    system_prompt: str | None = Field(None, description="System prompt prepended to every prompt.")
    template: str | None = Field(
        None, description="str.format template over the row's columns, e.g. 'Question: {question}'."
    )
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="Fraction of rows held out for evaluation.")


class GuessEnvConfig(_Strict):
    """Built-in multi-turn task (envs/multiturn.py): guess a secret number; the env answers "Higher."/"Lower."."""

    type: Literal["guess"] = Field(description="Env kind.")
    high: int = Field(8, ge=2, description="The secret is in 1..high.")
    max_turns: int = Field(3, ge=1, description="Model turns per episode.")
    decay: float = Field(0.25, ge=0, le=1, description="Reward for finding it: 1 - decay * (turns - 1).")
    system_prompt: str | None = Field(None, description="System prompt; None uses the task's default.")


class SignalingEnvConfig(_Strict):
    """An agent of the cooperative referential game (envs/signaling.py): the sender sees the target,
    the receiver sees the sender's message and picks an object; both get 1 for a correct pick."""

    type: Literal["signaling"] = Field(description="Env kind.")
    role: Literal["sender", "receiver"] = Field(description="This group's role in the game.")
    game: str | None = Field(
        None,
        description="Name that pairs agents into one game (default: the env type); replica k plays with replica k.",
    )
    num_objects: int = Field(4, ge=2, le=8, description="Objects to pick from (chance = 1 / num_objects).")
    objects: Literal["numbers", "words"] = Field(
        "numbers", description="Object names: 1, 2, ... (what builtin:tiny writes) or red, blue, ... (real models)."
    )
    shuffle: bool = Field(False, description="Shuffle the objects' order in every instance.")
    message_chars: int = Field(16, ge=1, description="The sender's message is cut to this many characters.")


class NegotiationEnvConfig(_Strict):
    """An agent of the competitive split-the-pot negotiation (envs/negotiation.py)."""

    type: Literal["negotiation"] = Field(description="Env kind.")
    role: Literal["first", "second"] = Field(description="This group's role: who opens, who answers.")
    game: str | None = Field(
        None,
        description="Name that pairs agents into one game (default: the env type); replica k plays with replica k.",
    )
    min_pot: int = Field(4, ge=1, description="Smallest pot (coins).")
    max_pot: int = Field(10, ge=1, description="Largest pot (coins).")
    max_turns: int = Field(4, ge=2, description="Turns (both players together) before the game ends without a deal.")


GameEnvConfig = SignalingEnvConfig | NegotiationEnvConfig
AnyEnvConfig = (
    ArithmeticEnvConfig
    | DatasetEnvConfig
    | DomainEnvConfig
    | CodeEnvConfig
    | GuessEnvConfig
    | SignalingEnvConfig
    | NegotiationEnvConfig
)  # a validated env config, whichever kind (``EnvConfig`` is the same union, discriminated by ``type``)
"""An env config of a game agent (one with a ``role`` and a ``game``)."""

GAME_KINDS = ("signaling", "negotiation")
ENV_REWARD_KINDS = ("guess", *GAME_KINDS)  # envs whose reward comes from the env: default rewards = [env_reward]


def _env_kind(value: Any) -> str:
    """The env's ``type``; a block without one is the built-in arithmetic task."""
    return value.get("type", "arithmetic") if isinstance(value, dict) else getattr(value, "type", "arithmetic")


EnvConfig = Annotated[
    Annotated[ArithmeticEnvConfig, Tag("arithmetic")]
    | Annotated[DatasetEnvConfig, Tag("dataset")]
    | Annotated[DomainEnvConfig, Tag("medical")]
    | Annotated[DomainEnvConfig, Tag("legal")]
    | Annotated[DomainEnvConfig, Tag("financial")]
    | Annotated[CodeEnvConfig, Tag("code")]
    | Annotated[GuessEnvConfig, Tag("guess")]
    | Annotated[SignalingEnvConfig, Tag("signaling")]
    | Annotated[NegotiationEnvConfig, Tag("negotiation")],
    Discriminator(
        _env_kind,
        custom_error_type="env_type",
        custom_error_message="env.type must be one of arithmetic, dataset, medical, legal, financial, code, "
        "guess, signaling, negotiation",
    ),
]


class GroupSpec(_Strict):
    """One group of the population (or a cohort of ``num_groups`` replicas with different seeds)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Group name; replicas get '-0', '-1', ... appended.")
    num_groups: int = Field(1, ge=1, description="Replicate this spec N times with different seeds (a cohort).")
    cohort: str | None = Field(
        None, description="Cohort this group is compared within; default: its spec name (so replicas form one cohort)."
    )
    seed: int | None = Field(
        None, description="Seed of this group (replica k uses seed + k); default derived from the run seed."
    )
    env: EnvConfig = Field(default_factory=ArithmeticEnvConfig, description="Where prompts come from.")
    format: TagFormat = Field(
        default_factory=TagFormat, description="Answer tags asked for by the prompt and checked by built-in rewards."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="format_exact"), RewardSpec(name="answer_numeric")],
        min_length=1,
        description="Reward functions and weights (default: format_exact + answer_numeric; env_reward for "
        "guess, signaling and negotiation).",
    )
    grpo: GRPOConfig = Field(
        default_factory=GRPOConfig, description="This group's GRPO hyper-parameters (merged over the run's)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="This group's LoRA shape (merged over the run's).")

    @model_validator(mode="after")
    def _env_reward_default(self) -> GroupSpec:
        """Multi-turn envs and games reward through the env: their default reward is ``env_reward``."""
        if "rewards" not in self.model_fields_set and self.env.type in ENV_REWARD_KINDS:
            self.rewards = [RewardSpec(name="env_reward")]
        return self


class TinyModelConfig(_Strict):
    """Settings of ``builtin:tiny``; the built model is cached on disk keyed by these."""

    hidden_size: int = Field(128, ge=16, description="Hidden size.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    copy_steps: int = Field(
        500,
        ge=0,
        description="Steps of the copy phase (plain-text repeat / key-value recall, 32 rows a step) that gives the model in-context copying; fewer than ~450 and the copy heads may not form.",
    )
    sft_steps: int = Field(
        300, ge=0, description="Steps of the supervised format phase on the built-in task (16 rows a step)."
    )
    copy_lr: float = Field(
        5e-4,
        gt=0,
        description="Learning rate of the copy phase (at 1e-3 or more the copy heads form late or not at all).",
    )
    sft_lr: float = Field(
        1e-3, gt=0, description="Learning rate of the format phase (at 1.5e-3 or more it can undo the copy heads)."
    )
    strict_fraction: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Share of format-phase targets in the exact answer format (the rest use looser variants), so GRPO has something to learn.",
    )
    seed: int = Field(0, description="Seed of the weights and the format-phase data.")


class PopulationConfig(_Strict):
    """How groups are compared and rebalanced (Ray Tune PBT / Isaac Lab threshold PBT)."""

    eval_interval: int = Field(0, ge=0, description="Held-out evaluation every N steps (0: only after the last step).")
    eval_temperature: float = Field(
        0.0, ge=0, description="0: greedy evaluation; > 0: fixed-seed sampling at this temperature."
    )
    eval_samples: int = Field(1, ge=1, description="Completions per held-out prompt (with eval_temperature > 0).")
    score_metric: Literal["train_reward", "eval_reward", "eval_accuracy"] = Field(
        "train_reward",
        description="What a group is scored by: rolling train reward, or the latest held-out reward/accuracy.",
    )
    score_window: int = Field(5, ge=1, description="Steps in the rolling mean of the train reward.")
    strategy: Literal["exploit_explore", "reallocate", "none"] = Field("none", description="Rebalancing strategy.")
    rebalance_frequency: int = Field(100, ge=1, description="Consider rebalancing every N steps.")
    performance_threshold: float = Field(
        0.1,
        ge=0,
        description="Rebalance a group whose relative gap to its cohort's best, (best - score) / |best|, exceeds this.",
    )
    quantile_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="exploit_explore: donors are drawn from this top fraction of the cohort (at least one).",
    )
    perturbation_factors: tuple[float, float] = Field(
        (0.8, 1.2), description="exploit_explore: each perturbed hyper-parameter is multiplied by one of these."
    )
    perturb: list[Literal["lr", "temperature", "beta"]] = Field(
        ["lr", "temperature", "beta"], description="exploit_explore: hyper-parameters to perturb."
    )
    reallocate_prompts: int = Field(
        1, ge=1, description="reallocate: prompts per step moved from a trailing group to its cohort's best."
    )
    min_prompts_per_step: int = Field(
        1, ge=1, description="reallocate: no group goes below this many prompts per step."
    )
    checkpoint_interval: int = Field(
        10,
        ge=1,
        description="Checkpoint (adapters, optimizer and RNG states, coordinator) every N steps and at the last; resume and recovery start from the latest and redo the steps after it.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    max_restarts: int = Field(
        2, ge=0, description="Restarts of a failing group actor before the group is marked failed."
    )


class RolloutConfig(_Strict):
    """The rollout service's engine settings (the ``vllm`` backend; the ``hf`` backend ignores them)."""

    gpu_memory_utilization: float = Field(
        0.35,
        gt=0,
        le=1,
        description="vLLM's share of GPU memory (weights + KV cache); the rest is for the training actors on the same GPU.",
    )
    max_model_len: int = Field(2048, ge=16, description="Longest prompt + completion vLLM schedules.")
    enable_prefix_caching: bool = Field(
        True, description="vLLM prefix cache (keyed by adapter name: every published version gets a new one)."
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="vLLM weights dtype (its LoRA kernels need bfloat16 or float16)."
    )
    num_gpus: float = Field(
        0.4, ge=0, description="Ray GPU resource of the rollout actor (fractional: colocated with the group actors)."
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower decode).")
    in_process: bool = Field(
        True,
        description="Run vLLM's engine core in the rollout actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0, as TRL's colocate mode) instead of spawning another one: a faster start, one process fewer.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vllm.LLM keyword arguments, e.g. {max_num_batched_tokens: 8192}. Over lorapop's own: max_num_seqs = one step's requests of all groups, compilation_config {cudagraph_specialize_lora: false, max_cudagraph_capture_size: max_num_seqs} (a compilation_config dict is merged key by key). May not repeat a field of this section.",
    )

    @field_validator("engine_kwargs")
    @classmethod
    def _no_repeats(cls, v: dict[str, Any]) -> dict[str, Any]:
        repeated = sorted(
            set(v)
            & (
                set(cls.model_fields)
                | {"model", "enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "seed", "logprobs_mode"}
            )
        )
        if repeated:
            raise ValueError(f"{repeated[0]!r} is set by lorapop or by a field of rollout:, not in engine_kwargs")
        return v


class TrainingConfig(_Strict):
    """The trainer service: one per device, the base once, one LoRA slot per group."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(
            data,
            "num_gpus_per_group",
            "group actors hold no model any more; the trainer service's GPU share is training.num_gpus",
        )

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Trainer device: auto = cuda where available.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Trainer weights dtype: auto = bfloat16 on cuda, float32 on cpu (LoRA weights and Adam state stay float32).",
    )
    num_gpus: float = Field(
        0.5,
        ge=0,
        description="Ray GPU resource of the trainer service on cuda (fractional: it shares the GPU with the rollout service).",
    )
    micro_batch_tokens: Literal["auto"] | int = Field(
        "auto",
        description="Tokens (rows x padded length) per forward/backward pass of the fused trainer; micro-batches mix groups and add up to each group's full-batch loss, so activation memory stays that of one micro-batch whatever the number of groups. 0: every group's rows in one pass. auto = 32768 on cuda (with gradient_checkpointing), 0 on cpu.",
    )
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto",
        description="Recompute each decoder layer in the backward instead of keeping its activations (transformers' activation checkpointing, TRL's default): more rows per pass in the same memory, about one more forward of compute. auto = true on cuda, false on cpu. Turns share_prompts off.",
    )
    share_prompts: Literal["auto"] | bool = Field(
        "auto",
        description="Compute each prompt once for the group_size samples that share it, in the trainer's forward and backward (same log-probs and gradients): auto = true on cpu, where it is faster, false on cuda, where it is slower (bench/RESULTS.md).",
    )

    @field_validator("micro_batch_tokens")
    @classmethod
    def _non_negative(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 'auto' or a token count >= 0 (0: one pass)")
        return v


class RayConfig(_Strict):
    """Where the actors run."""

    address: str | None = Field(
        None, description="Existing cluster address ('auto', 'ray://host:10001'); None starts an embedded local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (None: all).")
    devices: Literal["auto"] | int = Field(
        "auto",
        description="Devices the groups spread over, each with its own rollout service and trainer service (the base once per device) serving a share of the groups, balanced by tokens per step. With more than one they are placed with a Ray placement group, one bundle per device (a GPU on cuda, a CPU on the cpu), on the nodes of a cluster too. auto: every GPU Ray sees on cuda, 1 on the cpu. Never more than there are groups.",
    )
    placement_strategy: Literal["auto", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "auto",
        description="Ray placement strategy of the devices' bundles: auto = PACK on cuda (a node's GPUs first), SPREAD on the cpu.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of each service that runs the model, the rollout and the trainer (None: every core; they take turns). The driver's ATEN_CPU_CAPABILITY, OMP/MKL settings and LORAPOP_CACHE reach the actors too; each actor's kernels and threads are a 'runtime' row in events/.",
    )

    @field_validator("devices")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'auto' or a number of devices >= 1")
        return v


class RunConfig(_Strict):
    """A whole lorapop run."""

    run_name: str | None = Field(
        None, description="Name of the run directory under output_dir; default '<config>-<timestamp>'."
    )
    output_dir: str = Field(
        "runs",
        validation_alias=AliasChoices("output_dir", "storage_path"),
        description="Parent of run directories; also spelled storage_path, as in Ray Train. On a cluster, a local or mounted filesystem path every node reaches (adapters, checkpoints and Parquet parts are written by the actors that hold them); absolute inside a Ray job.",
    )
    seed: int = Field(0, description="Run seed; groups without a seed get seed + 1000 * index.")
    steps: int = Field(30, ge=1, description="GRPO steps per group.")
    base_model: str = Field(
        "builtin:tiny",
        description="'builtin:tiny', 'builtin:random-0.5b' / 'builtin:random-1b' (randomly initialised Llama for benchmarks), a local Hugging Face model directory, or a hub id (needs network).",
    )
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Settings of builtin:tiny.")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="Rollout backend: vllm where CUDA and vllm import, else hf."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout engine settings (vllm).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Trainer device and dtype.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster settings.")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="Run-level GRPO defaults.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Run-level LoRA defaults.")
    samples_per_step: int = Field(
        -1, ge=-1, description="Completions per group and step written to samples/ (-1: all)."
    )
    eval_prompts: int = Field(16, ge=0, description="Held-out prompts per group in each evaluation (0: no evaluation).")
    population: PopulationConfig = Field(
        default_factory=PopulationConfig, description="Evaluation, scoring, rebalancing, checkpoints, recovery."
    )
    groups: list[GroupSpec] = Field(min_length=1, description="The population.")

    @model_validator(mode="before")
    @classmethod
    def _merge_group_overrides(cls, data: Any) -> Any:
        """Merge each group's partial ``grpo``/``lora`` blocks over the run-level ones."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            return data
        merged = []
        for g in data["groups"]:
            if isinstance(g, dict):
                g = dict(g)
                for key in ("grpo", "lora"):
                    base, own = data.get(key) or {}, g.get(key) or {}
                    if isinstance(base, dict) and isinstance(own, dict):
                        g[key] = {**base, **own}
            merged.append(g)
        return {**data, "groups": merged}

    @model_validator(mode="after")
    def _games_complete(self) -> RunConfig:
        """Every game has one group per role, with the same game settings, replicas and batch shape."""
        games: dict[str, list[tuple[GroupSpec, GameEnvConfig]]] = {}
        for g in self.groups:
            if isinstance(g.env, GameEnvConfig):  # the env types in GAME_KINDS
                games.setdefault(g.env.game or g.env.type, []).append((g, g.env))
        for name, agent_envs in games.items():
            agents = [a for a, _ in agent_envs]
            roles = [env.role for _, env in agent_envs]
            wanted = {"signaling": ["sender", "receiver"], "negotiation": ["first", "second"]}[agents[0].env.type]
            if sorted(roles) != sorted(wanted) or len({a.env.type for a in agents}) > 1:
                raise ValueError(
                    f"game {name!r}: needs one group per role {wanted}, got "
                    + ", ".join(f"{a.name} ({env.type}/{env.role})" for a, env in agent_envs)
                )
            first = agents[0]
            for a in agents[1:]:
                for label, x, y in (
                    ("env", first.env.model_dump(exclude={"role"}), a.env.model_dump(exclude={"role"})),
                    ("num_groups", first.num_groups, a.num_groups),
                    ("grpo.group_size", first.grpo.group_size, a.grpo.group_size),
                    ("grpo.prompts_per_step", first.grpo.prompts_per_step, a.grpo.prompts_per_step),
                ):
                    if x != y:
                        raise ValueError(
                            f"game {name!r}: groups {first.name} and {a.name} must agree on {label} ({x} vs {y})"
                        )
        return self

    @model_validator(mode="after")
    def _unique_group_names(self) -> RunConfig:
        names = [g.name for g in self.groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"group names must be unique; repeated: {', '.join(dupes)}")
        return self
