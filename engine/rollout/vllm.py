"""The ``vllm`` rollout backend: one ``vllm.LLM`` with multi-LoRA, every group's requests in one batch.

One engine holds one copy of the frozen base; each group's adapter is a vLLM LoRA, and each request
carries its group's ``LoRARequest``, so a single ``generate`` call runs all groups' prompts together
(the scheduler mixes up to ``max_loras`` adapters per step). Same interface as ``HFRollout``:
``publish``, ``adapter_versions``, ``generate``. Run it as a Ray actor on a GPU
(``ray.remote(num_gpus=...)(VLLMRollout)``) or as a plain object.

Publishing (after every optimizer step of a group), adapter only, no merge:
  1. the LoRA state dict (PEFT key names) is written as ``adapter_model.safetensors`` +
     ``adapter_config.json`` into a fresh directory under ``adapter_root`` (RAM-backed ``/dev/shm``
     where present);
  2. the old version is removed from the engine and the new one is preloaded with
     ``llm_engine.add_lora`` under a new ``lora_int_id`` and a new name (``group@vN``);
  3. the old version's directory is deleted.
A new id, name and path per version means vLLM can never serve the old weights (a request that
reuses an id with a new path silently keeps the old ones) and the prefix cache, keyed by adapter
name, never hands out KV blocks computed with the old adapter.

Log-probs: the engine runs with ``logprobs_mode="processed_logprobs"``, i.e. the log-softmax of
the logits after temperature (and after top-k/top-p, which renormalise over the kept tokens; with
``top_p=1`` this is exactly the ``hf`` backend's ``log_softmax(logits / T)``).
Seeds: each completion is its own request with ``seed = f(request.seed, prompt, sample)``, so its
random draws do not depend on what else is in the batch.
Nothing is imported at module import time: this file imports on a CPU machine without vLLM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.models.serve import lora_rank_slot  # (vLLM's max_lora_rank choices)
from engine.rollout.types import RolloutRequest, RolloutResult

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest


def default_adapter_root() -> Path:
    """A fresh RAM-backed directory (``/dev/shm``) where present, else the temp directory."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="lorapop-adapters-", dir=base))


def sample_seed(seed: int, prompt: int, sample: int) -> int:
    """Seed of sample ``sample`` of prompt ``prompt`` of a request seeded ``seed`` (63-bit)."""
    digest = hashlib.blake2b(f"{seed}:{prompt}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def build_llm(
    model_path: str,
    *,
    lora_rank: int | None,
    max_loras: int = 1,
    max_cpu_loras: int | None = None,
    gpu_memory_utilization: float = 0.5,
    max_model_len: int = 2048,
    enable_prefix_caching: bool = True,
    dtype: str = "bfloat16",
    seed: int = 0,
    **llm_kwargs,
):
    """A ``vllm.LLM`` for rollouts; ``lora_rank=None`` builds a base-only engine (no LoRA at all)."""
    from vllm import LLM

    lora = (
        {}
        if lora_rank is None
        else {
            "enable_lora": True,
            "max_loras": max_loras,
            "max_cpu_loras": max(max_cpu_loras or 0, max_loras),
            "max_lora_rank": lora_rank_slot(lora_rank),
        }
    )
    return LLM(
        model=model_path,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        enable_prefix_caching=enable_prefix_caching,
        logprobs_mode="processed_logprobs",
        **lora,
        **llm_kwargs,
    )


def engine_defaults(batch: int, engine_kwargs: dict | None = None) -> dict:
    """``vllm.LLM`` arguments sized for a rollout service whose largest ``generate`` is ``batch`` requests
    (every group's prompts x samples), under the user's ``engine_kwargs`` (which win; a
    ``compilation_config`` dict is merged key by key).

    - ``max_num_seqs``: ``batch`` rounded up to 8, as TRL sizes its colocated engine to its batch: vLLM's
      default (1024 on a large GPU) captures CUDA graphs for batch sizes no step ever runs.
    - ``compilation_config.max_cudagraph_capture_size``: that many sequences (at most 512).
    - ``compilation_config.cudagraph_specialize_lora: false``: every request lorapop sends carries an
      adapter, so graphs without LoRA are never replayed; capturing them doubled the graphs.

    >>> engine_defaults(250)["max_num_seqs"], engine_defaults(250, {"max_num_seqs": 64})["compilation_config"]
    (256, {'cudagraph_specialize_lora': False, 'max_cudagraph_capture_size': 64})
    """
    user = dict(engine_kwargs or {})
    seqs = int(user.get("max_num_seqs") or max(8, -(-batch // 8) * 8))
    compilation = {"cudagraph_specialize_lora": False, "max_cudagraph_capture_size": min(seqs, 512)}
    given = user.pop("compilation_config", None)
    if isinstance(given, dict):
        compilation.update(given)
    elif given is not None:  # a compilation level, or a CompilationConfig: the user's, as it is
        compilation = given
    return {"max_num_seqs": seqs, **user, "compilation_config": compilation}


def sampling_params(r: RolloutRequest, prompt: int, sample: int, eos_token_id: int | None, ignore_eos: bool = False):
    """vLLM ``SamplingParams`` of one completion: its sampled token's log-prob, no detokenising."""
    from vllm import SamplingParams

    common = {"n": 1, "max_tokens": r.max_new_tokens, "logprobs": 0, "detokenize": False, "ignore_eos": ignore_eos}
    if r.greedy:
        return SamplingParams(temperature=0.0, **common)
    return SamplingParams(
        temperature=r.temperature, top_p=r.top_p, top_k=0, seed=sample_seed(r.seed, prompt, sample), **common
    )


def sampled_logprobs(completion) -> list[float]:
    """The sampled token's log-prob at each position of a vLLM ``CompletionOutput``."""
    out = []
    for token, position in zip(completion.token_ids, completion.logprobs):
        out.append(position[token].logprob)
    return out


def run_requests(
    llm,
    requests: list[RolloutRequest],
    lora_for,
    versions: dict[str, int] | None = None,
    eos_token_id: int | None = None,
    ignore_eos: bool = False,
) -> list[RolloutResult]:
    """One ``llm.generate`` over every completion of every request; ``lora_for(group)`` gives the
    ``LoRARequest`` (or None for the base). Results come back prompt-major, one per request."""
    prompts, params, loras = [], [], []
    for r in requests:
        lora = lora_for(r.group)
        for i, p in enumerate(r.prompt_ids):
            for j in range(r.n):
                prompts.append({"prompt_token_ids": list(p)})
                params.append(sampling_params(r, i, j, eos_token_id, ignore_eos))
                loras.append(lora)
    t0 = time.perf_counter()
    outputs = llm.generate(
        prompts, params, lora_request=loras if any(x is not None for x in loras) else None, use_tqdm=False
    )
    seconds = time.perf_counter() - t0
    results, start = [], 0
    for r in requests:
        size = len(r.prompt_ids) * r.n
        part = [o.outputs[0] for o in outputs[start : start + size]]
        start += size
        results.append(
            RolloutResult(
                group=r.group,
                adapter_version=(versions or {}).get(r.group, -1),
                prompt_ids=[list(p) for p in r.prompt_ids for _ in range(r.n)],
                completion_ids=[list(c.token_ids) for c in part],
                logprobs=[sampled_logprobs(c) for c in part],
                finish_reasons=["stop" if c.finish_reason == "stop" else "length" for c in part],
                seconds=seconds,
                extra={"backend": "vllm"},
            )
        )
    return results


def vllm_adapter_config(lora: dict, model_path: str, keys: list[str]) -> dict:
    """PEFT ``adapter_config.json`` of an adapter with LoRA settings ``lora`` and weights ``keys``, the
    modules named explicitly (read off the keys), so vLLM need not resolve shorthands like ``all-linear``."""
    from engine.models.base import peft_lora_config

    config = peft_lora_config(**lora).to_dict()
    modules = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys if ".lora_" in k})
    config.update(base_model_name_or_path=model_path, target_modules=modules, peft_type="LORA", task_type="CAUSAL_LM")
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def write_adapter_dir(
    root: str | Path, group: str, version: int, config: dict, write_weights: Callable[[Path], None]
) -> Path:
    """A new adapter directory ``root/<group>/v<version>-<random>`` (never reused, so vLLM never serves
    stale weights under an old path): ``write_weights(path)`` writes adapter_model.safetensors,
    then adapter_config.json (``config``); written under a temporary name and renamed into place."""
    import uuid

    target = Path(root) / group / f"v{version}-{uuid.uuid4().hex[:12]}"
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True)
    write_weights(tmp / "adapter_model.safetensors")
    (tmp / "adapter_config.json").write_text(json.dumps(config))
    os.replace(tmp, target)
    return target


class VLLMRollout:
    """Ray actor (``ray.remote(num_gpus=f)(VLLMRollout)``) or a plain object; state lives here."""

    def __init__(
        self,
        model_path: str,
        adapters: dict[str, dict],
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 2048,
        adapter_root: str | None = None,
        enable_prefix_caching: bool = True,
        dtype: str = "bfloat16",
        seed: int = 0,
        ignore_eos: bool = False,
        in_process: bool = False,
        **llm_kwargs,
    ):
        """``adapters``: group -> LoRA kwargs (``r``, ``alpha``, ``dropout``, ``target_modules``), as for
        ``HFRollout``. ``ignore_eos`` (benchmarks only) always generates ``max_new_tokens``.
        ``llm_kwargs`` go to ``vllm.LLM`` as they are (``enforce_eager``, ``max_num_seqs``,
        ``enable_sleep_mode``, ...). ``in_process``: the engine core runs in this process
        (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, TRL's colocate mode), not a spawned one."""
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read by vLLM when the engine is built
        from transformers import AutoTokenizer

        if not adapters:
            raise ValueError("VLLMRollout needs at least one group")
        self.model_path = model_path
        self.lora = {g: dict(kw) for g, kw in adapters.items()}
        self.eos_token_id = AutoTokenizer.from_pretrained(model_path).eos_token_id
        self.ignore_eos = ignore_eos
        self.dtype = dtype  # adapters are written in the engine's dtype (vLLM's lora_dtype "auto")
        self.own_root = adapter_root is None
        self.root = Path(adapter_root) if adapter_root else default_adapter_root()
        self.root.mkdir(parents=True, exist_ok=True)
        rank = max(kw["r"] for kw in adapters.values())
        self.llm = build_llm(
            model_path,
            lora_rank=rank,
            max_loras=len(adapters),
            max_cpu_loras=len(adapters),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            dtype=dtype,
            seed=seed,
            **llm_kwargs,
        )
        self.current: dict[str, LoRARequest] = {}  # group -> LoRARequest of the version served now
        self.versions = {g: -1 for g in adapters}  # -1: no version published yet
        self.next_id = 1
        self.last_publish: dict[str, float] = {}  # timings of the last publish (seconds), for benchmarks

    def add_groups(self, adapters: dict[str, dict]) -> None:
        """Serve more groups (each needs a publish before it generates): the groups of a device that was
        lost move to a device that is left. The engine keeps its ``max_loras`` (adapters in one batch):
        with more groups than that, vLLM schedules a step's requests in waves."""
        if any(kw["r"] > lora_rank_slot(max(v["r"] for v in self.lora.values())) for kw in adapters.values()):
            raise ValueError("an added group's LoRA rank is above the engine's max_lora_rank")
        for g, kw in adapters.items():
            if g not in self.lora:
                self.lora[g], self.versions[g] = dict(kw), -1

    def adapter_dtype(self) -> str:
        """The dtype adapters are served in (the trainer casts to it before sending them)."""
        return self.dtype if isinstance(self.dtype, str) and self.dtype != "auto" else "bfloat16"

    def publish(self, group: str, version: int, state_dict: dict) -> int:
        """Serve ``state_dict`` (LoRA weights, PEFT key names) as ``group``'s adapter from the next
        ``generate`` on; the previous version is unloaded and its directory deleted."""
        return self.publish_many({group: (version, state_dict)})[group]

    def publish_many(self, adapters: dict[str, tuple[int, dict]]) -> dict[str, int]:
        """``publish`` of several groups in one call: ``{group: (version, state_dict)}``. The adapter
        files are written in parallel, then loaded into the engine one after another (``load_published``)."""
        from concurrent.futures import ThreadPoolExecutor

        import torch
        from safetensors.torch import save_file

        self._check_known(adapters)
        dtype = getattr(torch, self.adapter_dtype())

        def write(item) -> tuple[str, tuple[int, str]]:
            group, (version, state_dict) = item
            tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
            config = vllm_adapter_config(self.lora[group], self.model_path, list(tensors))
            return group, (
                version,
                str(write_adapter_dir(self.root, group, version, config, lambda path: save_file(tensors, str(path)))),
            )

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(8, len(adapters)) or 1) as pool:
            written = dict(pool.map(write, adapters.items()))
        write_s = time.perf_counter() - t0
        versions = self.load_published(written)
        self.last_publish = {**self.last_publish, "write_s": write_s, "total_s": time.perf_counter() - t0}
        return versions

    def _check_known(self, groups) -> None:
        unknown = sorted(set(groups) - set(self.lora))
        if unknown:
            raise KeyError(f"unknown group {unknown[0]!r}")

    def _load(self, group: str, version: int, target: Path) -> None:
        """Load ``target`` into the engine as ``group``'s adapter (a new id and name) and drop the old one."""
        from vllm.lora.request import LoRARequest

        old = self.current.get(group)
        if old is not None:  # unload first: max_cpu_loras holds exactly one version per group
            self.llm.llm_engine.remove_lora(old.lora_int_id)
        lora_id, self.next_id = self.next_id, self.next_id + 1  # a new id per version, never reused
        request = LoRARequest(f"{group}@v{version}#{lora_id}", lora_id, str(target))
        if not self.llm.llm_engine.add_lora(request):  # preload now, not inside the next rollout
            raise RuntimeError(f"vLLM refused adapter {request.lora_name} from {target}")
        if old is not None:
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.current[group] = request
        self.versions[group] = version

    # --- adapters written by the trainer itself (no state dict through Ray), and by publish_many ----

    def publish_target(self) -> dict:
        """Where a trainer on this node writes adapters for ``load_published``: this actor's adapter root,
        node and dtype."""
        import ray

        return {"root": str(self.root), "node": ray.get_runtime_context().get_node_id(), "dtype": self.adapter_dtype()}

    def load_published(self, adapters: dict[str, tuple[int, str]]) -> dict[str, int]:
        """Serve adapters the trainer wrote (``{group: (version, directory)}``, each complete and renamed
        into place under ``publish_target()["root"]/<group>``): loaded one after another, old versions
        unloaded and deleted."""
        self._check_known(adapters)
        t0 = time.perf_counter()
        for g, (v, path) in adapters.items():
            self._load(g, v, Path(path))
        self.last_publish = {
            "write_s": 0.0,
            "load_s": time.perf_counter() - t0,
            "total_s": time.perf_counter() - t0,
            "adapters": len(adapters),
        }
        return {g: v for g, (v, _) in adapters.items()}

    def runtime(self) -> str:
        from engine.models.base import torch_runtime

        return torch_runtime()

    def adapter_versions(self) -> dict[str, int]:
        return dict(self.versions)

    def generate(self, requests: list[RolloutRequest]) -> list[RolloutResult]:
        """All groups' requests of one step in one ``generate`` call, each on its group's adapter."""
        for r in requests:
            if self.versions.get(r.group, -1) < 0:
                raise RuntimeError(f"group {r.group!r} has no published adapter")
        return run_requests(self.llm, requests, self.current.get, self.versions, self.eos_token_id, self.ignore_eos)

    def close(self) -> None:
        """Shut the engine down and delete the adapter directories this object created."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # shutdown is best-effort: the process may be exiting anyway
                pass
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)
