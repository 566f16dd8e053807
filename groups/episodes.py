"""Episodes of one group's step, as token transcripts with a loss mask on the model's own tokens.

A single-turn step is one episode per completion; a multi-turn env or a game adds turns:

    prompt | completion 1 | observation 2 | completion 2 | ...        (token ids)
       -   |   mask = 1   |   mask = 0    |   mask = 1   |            (GRPO loss mask)

Completion tokens are the sampler's ids, never re-tokenized; an observation is tokenized as the
text the chat template puts between the model's last turn and the next generation prompt, so the
trainer sees exactly what the sampler saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.rollout.types import RolloutRequest, RolloutResult


@dataclass
class Transcript:
    """One episode from one group's point of view."""

    row: int  # index of the row (prompt / game instance) this episode plays
    prompt: list[dict] | str | None = None  # the first prompt (what reward functions get as ``prompts``)
    messages: list[dict] | str | None = None  # the conversation so far (a plain string for non-chat prompts)
    prompt_ids: list[int] = field(default_factory=list)  # the first prompt
    ids: list[int] = field(default_factory=list)  # everything after the first prompt
    mask: list[float] = field(default_factory=list)  # 1.0 on tokens the model sampled
    logprobs: list[float] = field(default_factory=list)  # sampler log-probs (0 on observation tokens)
    replies: list[str] = field(default_factory=list)  # the model's turns, decoded
    finish_reason: str = "stop"
    adapter_version: int = -1
    stopped: bool = False  # last completion ended with eos

    @property
    def turns(self) -> int:
        return len(self.replies)


class Episodes:
    """The transcripts of one step (or one evaluation) of one group, and the requests that extend them."""

    def __init__(
        self,
        tokenizer,
        encode: Callable[[Any], list[int]],
        group: str,
        rows: list[dict],
        n: int,
        sampling: dict[str, Any],
    ):
        """``n`` episodes per row; ``encode(prompt)`` gives a first prompt's token ids; ``sampling`` holds the
        ``RolloutRequest`` fields max_new_tokens, temperature, top_p, seed, greedy."""
        self.tokenizer, self.encode, self.group, self.rows, self.n = tokenizer, encode, group, rows, n
        self.sampling = sampling
        self.transcripts = [Transcript(row=i // n) for i in range(len(rows) * n)]
        self.rollout_seconds = 0.0
        self._asked: list[int] = []  # episodes of the request in flight

    def first_request(self) -> RolloutRequest:
        """Turn 1 of an env's episodes: the episodes of a row share its prompt, so ``n`` completions per prompt."""
        prompt_ids = [self.encode(row["prompt"]) for row in self.rows]
        for t in self.transcripts:
            t.prompt, t.messages = _copy(self.rows[t.row]["prompt"]), _copy(self.rows[t.row]["prompt"])
            t.prompt_ids = list(prompt_ids[t.row])
        self._asked = list(range(len(self.transcripts)))
        return RolloutRequest(group=self.group, prompt_ids=prompt_ids, n=self.n, **self.sampling)

    def request(self, observations: dict[int, Any], turn: int) -> RolloutRequest:
        """One completion per episode named: its first prompt (an episode with no turn yet, e.g. a game
        agent's), or the next user message appended to its transcript."""
        prompts = []
        for e, obs in observations.items():
            t = self.transcripts[e]
            if not t.prompt_ids:
                t.prompt, t.messages = _copy(obs), _copy(obs)
                t.prompt_ids = self.encode(obs)
            else:
                ids = self._observation_ids(t, obs)
                t.ids += ids
                t.mask += [0.0] * len(ids)
                t.logprobs += [0.0] * len(ids)
            prompts.append(t.prompt_ids + t.ids)
        self._asked = list(observations)
        seed = (self.sampling["seed"] * 31 + turn * 1_000_003) % (2**31 - 1)
        return RolloutRequest(group=self.group, prompt_ids=prompts, n=1, **{**self.sampling, "seed": seed})

    def record(self, result: RolloutResult) -> dict[int, str]:
        """Append the completions of the request in flight; returns each episode's new reply text."""
        texts = self.tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
        self.rollout_seconds += result.seconds
        if len(texts) != len(self._asked):
            raise ValueError(f"group {self.group}: {len(texts)} completions for {len(self._asked)} episodes")
        eos = self.tokenizer.eos_token_id
        out = {}
        for e, ids, lp, reason, text in zip(
            self._asked, result.completion_ids, result.logprobs, result.finish_reasons, texts
        ):
            t = self.transcripts[e]
            t.ids += ids
            t.mask += [1.0] * len(ids)
            t.logprobs += lp
            t.replies.append(text)
            t.finish_reason, t.adapter_version = reason, result.adapter_version
            t.stopped = bool(ids) and ids[-1] == eos
            if isinstance(t.messages, list):
                t.messages.append({"role": "assistant", "content": text})
            else:
                t.messages += text
            out[e] = text
        self._asked = []
        return out

    def completions(self) -> list:
        """What reward functions get as ``completions``: the model's turns only (TRL's two formats)."""
        return [
            [{"role": "assistant", "content": r} for r in t.replies]
            if isinstance(t.messages, list)
            else "".join(t.replies)
            for t in self.transcripts
        ]

    def _observation_ids(self, t: Transcript, text: str) -> list[int]:
        """Tokens between the model's last turn and its next turn: end of turn, user message, generation prompt."""
        tok = self.tokenizer
        if not isinstance(t.messages, list):
            assert t.messages is not None  # set with the episode's first prompt (it has prompt_ids)
            t.messages += text
            return tok(text, add_special_tokens=False)["input_ids"]
        before = tok.apply_chat_template(t.messages[:-1], add_generation_prompt=True, tokenize=False)
        reply = t.messages[-1]["content"]
        t.messages.append({"role": "user", "content": text})
        after = tok.apply_chat_template(t.messages, add_generation_prompt=True, tokenize=False)
        if after.startswith(before + reply):
            delta = after[len(before) + len(reply) :]
            eos_text = tok.eos_token or ""
            if t.stopped and eos_text and delta.startswith(eos_text):
                delta = delta[len(eos_text) :]  # the model already sampled the end-of-turn token
        else:  # a template that rewrites earlier turns: fall back to the rendered difference
            delta = after[len(tok.apply_chat_template(t.messages[:-1], tokenize=False)) :]
        return tok(delta, add_special_tokens=False)["input_ids"]


def _copy(prompt):
    return [dict(m) for m in prompt] if isinstance(prompt, list) else str(prompt)
