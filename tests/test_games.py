"""Game and multi-turn env logic without a model: turns, messages, rewards, config validation."""

from __future__ import annotations

import pytest

from envs.game import GameEpisodes
from envs.multiturn import GuessNumberEnv
from envs.negotiation import NegotiationGame
from envs.signaling import SignalingGame


def play(episodes: GameEpisodes, policy) -> int:
    """Play every episode to the end with ``policy(group, observation) -> reply``; returns the rounds."""
    rounds = 0
    while obs := episodes.observations():
        rounds += 1
        for group, per_episode in obs.items():
            episodes.record(group, {e: policy(group, o) for e, o in per_episode.items()})
    return rounds


def test_signaling_rewards_a_correct_pick_for_both_agents_and_routes_the_message():
    game = SignalingGame(seed=1, num_objects=4)
    episodes = GameEpisodes(game, {"sender": "alice", "receiver": "bob"}, group_size=2)
    rows = episodes.reset(game.batch(step=3, n=5))
    seen = []

    def policy(group, obs):
        text = obs[-1]["content"]
        if group == "alice":  # an honest sender: the target, in answer tags, plus noise past the cut
            return f"<answer>{text.split('Target: ')[1].rstrip('.')}" + "x" * 40 + "</answer>"
        seen.append(text)
        return f"<answer>{text.split('Message: ')[1][:1]}</answer>"

    assert play(episodes, policy) == 2  # the sender's round, then the receiver's
    assert all(
        f"Message: {row['target']}" + "x" * 15 in text for row, text in zip([r for r in rows for _ in "ab"], seen)
    )
    rewards = episodes.rewards()
    assert rewards == {"alice": [1.0] * 10, "bob": [1.0] * 10}
    assert episodes.success() == [1.0] * 10


def test_signaling_receiver_ignoring_the_message_is_at_chance():
    game = SignalingGame(seed=0, num_objects=4)
    episodes = GameEpisodes(game, {"sender": "s", "receiver": "r"}, group_size=1)
    episodes.reset(game.batch(step=0, n=400))
    play(episodes, lambda g, obs: "<answer>2</answer>")
    rate = sum(episodes.success()) / 400
    assert 0.18 < rate < 0.32  # 1 / num_objects


def test_negotiation_deal_splits_the_pot_and_no_deal_gives_nothing():
    game = NegotiationGame(seed=0, min_pot=10, max_pot=10, max_turns=4)
    state = game.reset({"pot": 10})
    assert game.to_move(state) == "first"
    game.act(state, "first", "<answer>7</answer>")
    assert game.observation(state, "second", False) == "The other player wants to keep 7, leaving you 3."
    game.act(state, "second", "<answer>accept</answer>")
    assert game.to_move(state) is None
    assert game.rewards(state) == {"first": 0.7, "second": 0.3} and game.success(state) == 1.0

    state = game.reset({"pot": 10})
    game.act(state, "first", "<answer>accept</answer>")  # nothing to accept yet: a wasted turn
    assert state["deal"] is None and state["last"] == "invalid"
    episodes = GameEpisodes(game, {"first": "a", "second": "b"}, group_size=1)
    episodes.reset([{"pot": 10}])
    assert play(episodes, lambda g, obs: "<answer>9</answer>") == 4  # both greedy: max_turns, no deal
    assert episodes.rewards() == {"a": [0.0], "b": [0.0]}


def test_negotiation_an_offer_within_the_standing_one_closes_the_deal_on_it():
    game = NegotiationGame(min_pot=10, max_pot=10, max_turns=4)
    state = game.reset({"pot": 10})
    game.act(state, "first", "<answer>6</answer>")  # leaves 4
    game.act(state, "second", "<answer>5</answer>")  # asks more than left: a counter-offer
    assert state["deal"] is None and state["offer"] == ("second", 5)
    game.act(state, "first", "<answer>3</answer>")  # asks less than the 5 left: takes the 5
    assert game.to_move(state) is None and game.rewards(state) == {"first": 0.5, "second": 0.5}
    state = game.reset({"pot": 10})
    game.act(state, "first", "<answer>8</answer>")
    game.act(state, "second", "<answer>2</answer>")  # exactly what was left
    assert game.rewards(state) == {"first": 0.8, "second": 0.2} and game.success(state) == 1.0


def test_negotiation_rejects_offers_outside_the_pot():
    game = NegotiationGame(min_pot=5, max_pot=5)
    state = game.reset({"pot": 5})
    game.act(state, "first", "<answer>6</answer>")
    assert state["offer"] is None
    game.act(state, "second", "<answer>2.5</answer>")
    assert state["offer"] is None


def test_game_agents_see_their_first_prompt_once_then_user_messages():
    game = NegotiationGame(min_pot=6, max_pot=6, max_turns=3)
    episodes = GameEpisodes(game, {"first": "a", "second": "b"}, group_size=1)
    episodes.reset([{"pot": 6}])
    first = episodes.observations()
    assert isinstance(first["a"][0], list) and first["a"][0][0]["role"] == "system"
    episodes.record("a", {0: "<answer>4</answer>"})
    assert isinstance(episodes.observations()["b"][0], list)  # b's first turn: the whole prompt
    episodes.record("b", {0: "<answer>3</answer>"})
    assert episodes.observations() == {"a": {0: "The other player wants to keep 3, leaving you 3."}}


def test_guess_env_answers_higher_lower_and_rewards_finding_it():
    env = GuessNumberEnv(seed=0, high=8, max_turns=3, decay=0.25)
    state = env.reset({"answer": "5"})
    assert env.step(state, "<answer>2</answer>").observation == "Higher."
    assert env.step(state, "7").observation.startswith("Reply with a number")
    turn = env.step(state, "<answer>5</answer>")
    assert turn.done and turn.reward == pytest.approx(0.5)  # found on turn 3
    assert env.batch(4, 3) == env.batch(4, 3) and env.batch(4, 3) != env.batch(5, 3)


def test_a_multi_turn_groups_env_answers_each_round_until_its_episodes_are_over(tmp_path, tiny_model_path):
    """The round loop's view of a multi-turn group (a plain GroupActor, no Ray): observe records the
    replies and says the group's env answers; answer gives the next turn's request for the episodes that
    go on, and None once all are over; the episode rewards add up turn by turn."""
    from pathlib import Path

    from engine.config.builders import group_plans
    from engine.config.schema import RunConfig
    from engine.rollout.types import RolloutResult
    from groups.actor import GroupActor

    cfg = RunConfig.model_validate(
        {
            "groups": [
                {
                    "name": "g",
                    "env": {"type": "guess", "high": 8, "max_turns": 2},
                    "grpo": {"prompts_per_step": 1, "group_size": 2},
                }
            ]
        }
    )
    actor = GroupActor(group_plans(cfg, Path(tmp_path))[0], tiny_model_path)
    tok = actor.tokenizer
    request = actor.begin(1)
    secret = actor._episodes.rows[0]["answer"]

    def reply(texts: list[str], prompts) -> RolloutResult:
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
        return RolloutResult("g", 0, prompts, ids, [[-1.0] * len(i) for i in ids], ["stop"] * len(ids))

    wrong = "1" if secret != "1" else "2"
    observed = actor.observe(reply([f"<answer>{secret}</answer>", f"<answer>{wrong}</answer>"], request.prompt_ids))
    assert observed.answers and observed.replies[0] == f"<answer>{secret}</answer>"
    second = actor.answer()  # episode 0 found it; episode 1 is told higher/lower and goes on
    assert second is not None and second.n == 1 and len(second.prompt_ids) == 1
    assert actor.observe(reply([f"<answer>{secret}</answer>"], second.prompt_ids)).answers
    assert actor.answer() is None  # every episode is over
    assert actor._env_rewards == [1.0, pytest.approx(0.75)]  # found on turn 1, and on turn 2 (decay 0.25)


@pytest.mark.parametrize(
    "groups, message",
    [
        ("[{name: s, env: {type: signaling, role: sender}}]", "needs one group per role"),
        (
            "[{name: s, env: {type: signaling, role: sender}}, {name: r, env: {type: signaling, role: receiver, num_objects: 3}}]",
            "must agree on env",
        ),
        (
            "[{name: s, env: {type: signaling, role: sender}}, {name: r, env: {type: signaling, role: receiver}, grpo: {group_size: 4}}]",
            "must agree on grpo.group_size",
        ),
        ("[{name: s, env: {type: signaling, role: sender}}, {name: r, env: {type: signaling, role: captain}}]", "role"),
    ],
)
def test_bad_game_configs_name_the_problem(tmp_path, groups, message):
    from engine.config.loading import ConfigError, load_config

    path = tmp_path / "bad.yaml"
    path.write_text(f"groups: {groups}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_game_and_multiturn_groups_default_to_the_env_reward(tmp_path):
    from engine.config.loading import load_config

    path = tmp_path / "ok.yaml"
    path.write_text("groups: [{name: g, env: {type: guess}}, {name: a, env: {type: arithmetic}}]\n")
    cfg, _ = load_config(path)
    assert [r.name for r in cfg.groups[0].rewards] == ["env_reward"]
    assert [r.name for r in cfg.groups[1].rewards] == ["format_exact", "answer_numeric"]
