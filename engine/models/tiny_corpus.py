"""The synthetic, offline pre-training data of ``builtin:tiny`` (engine/models/tiny.py builds with it).

Two phases, each a stream of ``(prompt, target)`` pairs drawn from a seeded ``random.Random``:

1. **copy** (``copy_example``): plain text, no chat template. "Repeat: 3 cat 41" -> "3 cat 41", or
   associative recall "a=3, b=cat. What is b?" -> "cat". Every target token is a copy from the
   prompt, the dense signal that makes a small transformer form induction (copy-by-content) heads
   quickly. Without this phase the model never reads its prompt: it learns the answer *format* but
   its answers do not depend on the question, so GRPO has no input-dependent behaviour to reinforce.
2. **format** (``arithmetic_targets``, ``recall_row`` / ``recall_targets``, ``pick_target``): chat
   prompts. Half the rows are the built-in arithmetic task, with the exact answer format for
   ``strict_fraction`` of the targets and looser variants for the rest (so GRPO has a format to
   learn); the other half are key/value recall in chat form ("Cards: 2, 7, 5. Hint: 7" ->
   "<answer>7</answer>"), which keeps the copy skill alive under the chat template.

The vocabulary is generic on purpose: no built-in env's wording ("Objects", "Target", "Message",
the domain tasks) occurs here, so what a group learns on those envs is learned by GRPO.

Measured when the recipe was made: with ``copy_steps=500`` at lr 5e-4 the copy heads formed for
4/4 seeds (400 steps: 5/6); at lr 3e-3 or higher they did not form within 1,200 steps.
"""

from __future__ import annotations

import random

from rewards.text import SOLUTION_END, SOLUTION_START

LIST_NAMES = ("Items", "Cards", "Boxes", "Options", "Numbers", "Choices", "Keys", "Slots")
KEY_NAMES = ("Pick", "Say", "Code", "Key", "Note", "Hint", "Value", "Word", "Goal", "Secret")
WORDS = ("cat", "dog", "sun", "tree", "fish", "bird", "rock", "star", "moon", "leaf")
COPY_TOKENS = tuple(str(i) for i in range(100)) + WORDS + tuple("abcdefghijklmnopqrstuvwxyz")
RECALL_STRICT_FRACTION = 0.5  # recall targets in the exact format (answer tags alone)
RECALL_SYSTEM_PROMPTS = (
    "Repeat the value. Reply as {start}value{end}.",
    "Reply as {start}value{end}.",
    "Answer with the {key}. Reply as {start}{key}{end}.",
    None,
)


def copy_example(rng: random.Random, max_len: int = 8) -> tuple[str, str]:
    """One plain-text copy example: repeat a sequence, or recall a key's value.

    >>> copy_example(random.Random(3))
    ('Copy this: 33 94 l 16 3 k', '33 94 l 16 3 k')
    >>> copy_example(random.Random(0))
    ('b=77, i=m, q=91, p=55, m=t. What is i?', 'm')
    """
    if rng.random() < 0.5:
        seq = " ".join(rng.choice(COPY_TOKENS) for _ in range(rng.randint(2, max_len)))
        return f"{rng.choice(('Repeat: ', 'Copy this: ', ''))}{seq}", seq
    keys = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(2, 6))
    values = [rng.choice(COPY_TOKENS) for _ in keys]
    k = rng.randrange(len(keys))
    return ", ".join(f"{key}={v}" for key, v in zip(keys, values)) + f". What is {keys[k]}?", values[k]


def recall_row(rng: random.Random, start: str = SOLUTION_START, end: str = SOLUTION_END) -> dict:
    """A key/value recall question as a chat prompt: ``prompt`` (messages), ``answer``, ``reasoning``.

    >>> row = recall_row(random.Random(1))
    >>> row["prompt"][-1]["content"], row["answer"]
    ('Value: 5. Slots: 2, 5, 1.', '5')
    """
    items = rng.sample([str(i) for i in range(1, 10)], rng.randint(2, 6))
    value = rng.choice(items) if rng.random() < 0.8 else str(rng.randint(1, 9))
    listed, key = f"{rng.choice(LIST_NAMES)}: {', '.join(items)}.", rng.choice(KEY_NAMES)
    layout = rng.random()
    if layout < 0.6:
        question = f"{listed} {key}: {value}."
    elif layout < 0.8:
        question = f"{key}: {value}. {listed}"
    else:
        question = rng.choice((f"Say {value}.", f"Repeat after me: {value}", f"{key}: {value}"))
    system = rng.choice(RECALL_SYSTEM_PROMPTS)
    messages = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system.format(start=start, end=end, key=key.lower())})
    return {"prompt": messages, "answer": value, "reasoning": f"{key.lower()} is {value}"}


def arithmetic_targets(env, row: dict) -> list[str]:
    """Targets for an arithmetic row of ``env`` (a ``TaskEnv``): its exact format first, then looser
    variants a half-trained model would produce."""
    r, a = row["reasoning"], row["answer"]
    think, answer = f"{env.reasoning_start}{r}{env.reasoning_end}", f"{env.solution_start}{a}{env.solution_end}"
    return [env.solution_text(row), answer, f"{think} {a}", f"{r}. The answer is {a}."]


def recall_targets(env, row: dict) -> list[str]:
    """Targets for a recall row, in ``env``'s tags: the answer tags alone (what its system prompt asks
    for) first, then the full format and looser variants."""
    a = row["answer"]
    answer = f"{env.solution_start}{a}{env.solution_end}"
    return [answer, env.solution_text(row), a, f"The answer is {a}."]


def pick_target(rng: random.Random, variants: list[str], strict_fraction: float) -> str:
    """The exact variant (the first) with probability ``strict_fraction``, else a looser one."""
    return variants[0] if rng.random() < strict_fraction else rng.choice(variants[1:])
