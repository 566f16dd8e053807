"""Cooperative referential game: the sender sees the target among a few objects and sends a
message; the receiver sees the objects and the message and picks one. Both get 1 when the pick is
the target, else 0; chance is ``1 / num_objects`` for a receiver that ignores the message.

The message is the text inside the sender's answer tags when it uses them (else its whole reply),
cut to ``message_chars`` characters, so the channel is short and the receiver's prompt stays small.
"""

from __future__ import annotations

import random

from envs.base import make_prompt
from envs.game import Game
from rewards.text import SOLUTION_END, SOLUTION_START, extract_answer

WORDS = ("red", "blue", "green", "gold", "pink", "gray", "black", "white")


class SignalingGame(Game):
    roles = ("sender", "receiver")
    max_turns = 2

    def __init__(
        self,
        seed: int = 0,
        num_objects: int = 4,
        objects: str = "numbers",
        shuffle: bool = False,
        message_chars: int = 16,
        solution_start: str = SOLUTION_START,
        solution_end: str = SOLUTION_END,
        **_tags: str,
    ) -> None:
        """``objects``: "numbers" (1, 2, ...: what the built-in tiny model already writes in its answer tags)
        or "words" (red, blue, ...: for real base models)."""
        if not 2 <= num_objects <= len(WORDS):
            raise ValueError(f"num_objects must be in 2..{len(WORDS)}, got {num_objects}")
        if objects not in ("numbers", "words"):
            raise ValueError(f"objects must be 'numbers' or 'words', got {objects!r}")
        super().__init__(seed)
        self.objects = [str(i + 1) for i in range(num_objects)] if objects == "numbers" else list(WORDS[:num_objects])
        self.shuffle, self.message_chars = shuffle, message_chars
        self.start, self.end = solution_start, solution_end

    def make_row(self, rng: random.Random) -> dict:
        objects = list(self.objects)
        if self.shuffle:
            rng.shuffle(objects)
        target = rng.choice(objects)
        return {"objects": objects, "answer": target, "target": target}

    def reset(self, row: dict) -> dict:
        return {"objects": row["objects"], "target": row["target"], "message": None, "pick": None}

    def to_move(self, state: dict) -> str | None:
        if state["message"] is None:
            return "sender"
        return "receiver" if state["pick"] is None else None

    def observation(self, state: dict, role: str, first: bool) -> list[dict] | str:
        objects = ", ".join(state["objects"])
        if role == "sender":
            system = f"You are the sender. Tell the receiver the target. Reply as {self.start}message{self.end}."
            return make_prompt(f"Objects: {objects}. Target: {state['target']}.", system)
        system = f"You are the receiver. Pick the target. Reply as {self.start}object{self.end}."
        return make_prompt(f"Objects: {objects}. Message: {state['message']}", system)

    def act(self, state: dict, role: str, reply: str) -> None:
        if role == "sender":
            inside = extract_answer(reply, self.start, self.end)
            state["message"] = (inside if inside is not None else reply.strip())[: self.message_chars]
        else:
            pick = extract_answer(reply, self.start, self.end)
            state["pick"] = (pick or "").strip().lower()

    def success(self, state: dict) -> float:
        return float(state["pick"] == state["target"])

    def rewards(self, state: dict) -> dict[str, float]:
        won = self.success(state)
        return {"sender": won, "receiver": won}
