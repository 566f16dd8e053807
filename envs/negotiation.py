"""Competitive split-the-pot negotiation: two agents share a pot of coins.

Players alternate, ``first`` opening. A turn is an offer, ``<answer>k</answer>`` = "I keep k"
(0 <= k <= pot), or ``<answer>accept</answer>`` to take the other's last offer. An offer that asks
for no more than the other's standing offer leaves closes the deal on that standing offer, as an
accept does (so a player who only ever names numbers can still agree: the demand-game reading of
an offer). A deal gives each player its share of the pot as reward; no deal within ``max_turns``
turns gives both 0. A reply that is neither is a wasted turn.
"""

from __future__ import annotations

import random

from envs.base import make_prompt
from envs.game import Game
from rewards.text import SOLUTION_END, SOLUTION_START, extract_answer, parse_number


class NegotiationGame(Game):
    roles = ("first", "second")

    def __init__(
        self,
        seed: int = 0,
        min_pot: int = 4,
        max_pot: int = 10,
        max_turns: int = 4,
        solution_start: str = SOLUTION_START,
        solution_end: str = SOLUTION_END,
        **_tags: str,
    ) -> None:
        if not 1 <= min_pot <= max_pot:
            raise ValueError(f"need 1 <= min_pot <= max_pot, got {min_pot}, {max_pot}")
        if max_turns < 2:
            raise ValueError(f"max_turns must be >= 2 (an offer and an answer), got {max_turns}")
        super().__init__(seed)
        self.min_pot, self.max_pot, self.max_turns = min_pot, max_pot, max_turns
        self.start, self.end = solution_start, solution_end

    def make_row(self, rng: random.Random) -> dict:
        pot = rng.randint(self.min_pot, self.max_pot)
        return {"pot": pot, "answer": str(pot // 2)}

    def reset(self, row: dict) -> dict:
        return {"pot": row["pot"], "offer": None, "deal": None, "turn": 0, "last": None}

    def to_move(self, state: dict) -> str | None:
        if state["deal"] is not None:
            return None
        return self.roles[state["turn"] % 2]

    def _other(self, role: str) -> str:
        return self.roles[1 - self.roles.index(role)]

    def observation(self, state: dict, role: str, first: bool) -> list[dict] | str:
        pot, offer = state["pot"], state["offer"]
        news = "The other player has not offered yet."
        if offer is not None:
            news = f"The other player wants to keep {offer[1]}, leaving you {pot - offer[1]}."
        elif state["last"] == "invalid":
            news = "The other player's reply was not an offer."
        if not first:
            return news
        system = (
            f"Split {pot} coins with the other player. Reply {self.start}k{self.end} to keep k coins. "
            f"Asking no more than you are left, or {self.start}accept{self.end}, takes the last offer."
        )
        return make_prompt(news, system)

    def act(self, state: dict, role: str, reply: str) -> None:
        state["turn"] += 1
        said = (extract_answer(reply, self.start, self.end) or "").strip().lower()
        offer = state["offer"]
        if said == "accept" and offer is not None and offer[0] == self._other(role):
            state["deal"] = {offer[0]: offer[1], role: state["pot"] - offer[1]}
            return
        keep = parse_number(said)
        if keep is not None and keep == int(keep) and 0 <= keep <= state["pot"]:
            if offer is not None and offer[0] == self._other(role) and keep <= state["pot"] - offer[1]:
                state["deal"] = {offer[0]: offer[1], role: state["pot"] - offer[1]}  # asks no more than offered
                return
            state["offer"], state["last"] = (role, int(keep)), "offer"
        else:
            state["offer"], state["last"] = None, "invalid"

    def success(self, state: dict) -> float:
        return float(state["deal"] is not None)

    def rewards(self, state: dict) -> dict[str, float]:
        if state["deal"] is None:
            return {r: 0.0 for r in self.roles}
        return {r: state["deal"][r] / state["pot"] for r in self.roles}
