"""Behaviour tests for the built-in domain tasks (envs/medical.py, envs/legal.py, envs/financial.py).

Every answer is recomputed here from the row's ``params`` with this file's own formulas (floats,
not the envs' exact helpers), and every input in ``params`` must be visible in the question. At
difficulty 0 ("facts in the prompt") the answer is read or picked from the table in ``params``.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

import pytest

from envs.base import Env
from envs.domains import DOMAIN_ENVS, make_domain_env
from envs.financial import FinancialEnv
from envs.legal import LegalEnv
from envs.medical import MedicalEnv

DOMAINS = ("medical", "legal", "financial")
LANGS = ("en", "vi")
LEVELS = (0, 1, 2, 3)
MAX_CHARS = {"en": 110, "vi": 120}
TABLE_MAX_CHARS = {"en": 150, "vi": 190}  # difficulty 0: the question carries a table of 3-5 entries
CASES = [(d, k, lang) for d in DOMAINS for k in LEVELS for lang in LANGS]
TABLE_TASK = {"medical": "dose_table", "legal": "fine_table", "financial": "rate_table"}

# The rulebook as this test expects it: topic -> article, and a word its case must contain (en, vi).
ARTICLE_OF = {
    "speed": 3,
    "red_light": 5,
    "helmet": 6,
    "seatbelt": 8,
    "phone": 9,
    "load": 11,
    "alcohol": 12,
    "parking": 15,
}
CASE_WORD = {
    "speed": ("60", "60"),
    "red_light": ("red", "đỏ"),
    "helmet": ("head", "đầu"),
    "seatbelt": ("buckled", "cài"),
    "phone": ("texted", "nhắn"),
    "load": ("8 t", "8 tấn"),
    "alcohol": ("breath", "cồn"),
    "parking": ("sidewalk", "vỉa hè"),
}
ROUNDING = {
    "whole number": 0,
    "1 decimal": 1,
    "2 decimals": 2,
    "số nguyên": 0,
    "1 chữ số thập phân": 1,
    "2 chữ số thập phân": 2,
}


def _rows(env: Env, steps: int = 25, n: int = 8) -> list[dict]:
    return [r for s in range(steps) for r in env.batch(s, n)]


def _stated_places(question: str) -> int | None:
    """The rounding the question asks for ("(2 decimals)" -> 2), None if it asks for none."""
    found = [places for text, places in ROUNDING.items() if f"({text})" in question or f", {text}" in question]
    assert len(found) <= 1, question
    return found[0] if found else None


def _check_number(answer: str, value: float, places: int | None) -> None:
    """``answer`` is ``value`` rounded to ``places`` decimals (None: exact, no trailing zeros)."""
    if places is None:
        assert re.fullmatch(r"-?\d+(\.\d*[1-9])?", answer), answer
        assert float(answer) == pytest.approx(value, rel=1e-12, abs=1e-12)
        return
    decimals = rf"\.\d{{{places}}}" if places else ""
    assert re.fullmatch(rf"-?\d+{decimals}", answer), (answer, places)
    assert abs(float(answer) - value) <= 0.5 * 10**-places + 1e-9, (answer, value)


def _medical_value(task: str, p: dict) -> float:
    lb_per_kg = 2.2
    values = {
        "dose": lambda: p["kg"] * p["mg_per_kg"],
        "dose_cap": lambda: min(p["kg"] * p["mg_per_kg"], p["max_mg"]),
        "dose_split": lambda: p["kg"] * p["mg_per_kg"] / p["doses"],
        "rate": lambda: p["ml"] / p["hours"],
        "rate_round": lambda: p["ml"] / p["hours"],
        "drops": lambda: p["ml"] * p["drops_per_ml"] / (p["hours"] * 60),
        "g_to_mg": lambda: p["g"] * 1000,
        "l_to_ml": lambda: p["l"] * 1000,
        "mg_to_g": lambda: p["mg"] / 1000,
        "ml_to_l": lambda: p["ml"] / 1000,
        "mcg_to_mg": lambda: p["mcg"] / 1000,
        "lb_to_kg": lambda: p["lb"] / lb_per_kg,
        "bmi_m": lambda: p["kg"] / p["m"] ** 2,
        "bmi_cm": lambda: p["kg"] / (p["cm"] / 100) ** 2,
    }
    return values[task]()


def _financial_value(task: str, p: dict) -> float:
    r = p.get("rate", 0) / 100
    if task == "simple_interest":
        return p["p"] * r * p["years"]
    if task == "simple_total":
        return p["p"] * (1 + r * p["years"])
    if task == "compound_total":
        return p["p"] * (1 + r) ** p["years"]
    if task == "compound_interest":
        return p["p"] * (1 + r) ** p["years"] - p["p"]
    if task == "loan":
        i = r / 12
        return p["p"] * i / (1 - (1 + i) ** -p["months"])
    assert task == "percent", task
    return (p["new"] - p["old"]) / p["old"] * 100


def _check_legal(row: dict) -> None:
    p, q, answer = row["params"], row["question"], row["answer"]
    if row["task"] == "deadline":
        start = dt.date.fromisoformat(p["date"])
        assert answer == (start + dt.timedelta(days=p["days"] + p.get("served", 0))).isoformat()
    elif row["task"] == "fine" and "fine_1_10" in p:
        over = p["over"] if "over" in p else p["speed"] - p["limit"]
        assert over >= 1
        fine = p["fine_1_10"] if over <= 10 else p["fine_11_20"] if over <= 20 else p["fine_21_up"]
        assert answer == str(fine)
        for key in ("fine_1_10", "fine_11_20", "fine_21_up"):
            assert f"${p[key]}" in q
    elif row["task"] == "fine":
        done = p["offences"].split(",")
        assert len(done) == (1 if row["difficulty"] == 2 else 2)
        assert answer == str(sum(p[f"fine_{o}"] for o in done))
        for key in (k for k in p if k.startswith("fine_")):
            assert f"${p[key]}" in q
    else:
        options = [int(x) for x in p["articles"].split(",")]
        assert len(options) == row["difficulty"] + 1
        assert answer == str(ARTICLE_OF[p["topic"]]) and int(answer) in options
        for n in options:
            assert re.search(rf"(?<!\d){n} \w", q), (n, q)
        assert CASE_WORD[p["topic"]][row["language"] == "vi"] in q, q


def _check_table_answer(row: dict) -> None:
    """Difficulty 0: entries are ``[key, name, value]`` (medical: ``[drug, dose]``, the drug being both
    key and name); the answer is the asked entry's value as written, or its key."""
    p, answer = row["params"], row["answer"]
    table, kind, asked = p["table"], p["kind"], p["asked"]
    assert row["task"] == TABLE_TASK[row["domain"]]
    if kind == "forward":
        (entry,) = [e for e in table if e[-2] == asked]
        assert answer == str(entry[-1]) and re.fullmatch(r"\d+(\.\d)?", answer), (answer, entry)
    elif kind == "article":
        assert row["domain"] == "legal"
        (entry,) = [e for e in table if e[-2] == asked]
        assert answer == str(entry[0])
    elif kind == "reverse":
        (entry,) = [e for e in table if e[-1] == asked]
        assert answer == str(entry[0])
    else:
        assert kind == "pick" and asked in ("highest", "lowest"), p
        values = [e[-1] for e in table]
        best = max(values) if asked == "highest" else min(values)
        assert answer == str(table[values.index(best)][0])


def _check_answer(row: dict) -> None:
    if row["difficulty"] == 0:
        _check_table_answer(row)
        return
    if row["domain"] == "legal":
        _check_legal(row)
        return
    value_of = _medical_value if row["domain"] == "medical" else _financial_value
    _check_number(row["answer"], value_of(row["task"], row["params"]), _stated_places(row["question"]))


def _params_in_question(row: dict) -> None:
    for key, value in row["params"].items():
        if isinstance(value, (int, float)):
            assert re.search(rf"(?<![\d.]){re.escape(str(value))}(?!\.?\d)", row["question"]), (
                key,
                value,
                row["question"],
            )
    if "date" in row["params"]:
        assert row["params"]["date"] in row["question"]


def _is_vietnamese(text: str) -> bool:
    return "đ" in text.lower() or any(unicodedata.combining(c) for c in unicodedata.normalize("NFD", text))


@pytest.mark.parametrize("domain,difficulty,language", CASES)
def test_answers_recomputed_from_params(domain, difficulty, language):
    env = make_domain_env(domain, seed=7, difficulty=difficulty, language=language)
    rows = _rows(env)
    assert len({r["params"]["kind"] if difficulty == 0 else r["task"] for r in rows}) >= 3
    max_chars = (TABLE_MAX_CHARS if difficulty == 0 else MAX_CHARS)[language]
    for row in rows:
        assert row["domain"] == domain and row["difficulty"] == difficulty and row["language"] == language
        assert row["prompt"] == [
            {"role": "system", "content": env.system_prompt},
            {"role": "user", "content": row["question"]},
        ]
        assert isinstance(row["answer"], str) and row["reasoning"] and row["answer"] in row["reasoning"]
        _check_answer(row)
        _params_in_question(row)
        assert len(row["question"]) <= max_chars, row["question"]
        assert _is_vietnamese(row["question"]) == (language == "vi"), row["question"]


@pytest.mark.parametrize("domain,difficulty", [(d, k) for d in DOMAINS for k in LEVELS])
def test_vietnamese_has_same_params_and_answers(domain, difficulty):
    en = make_domain_env(domain, seed=3, difficulty=difficulty)
    vi = make_domain_env(domain, seed=3, difficulty=difficulty, language="vi")
    for step in (0, 9):
        for a, b in zip(en.batch(step, 16), vi.batch(step, 16), strict=True):
            assert (a["task"], a["params"], a["answer"]) == (b["task"], b["params"], b["answer"])
            assert a["question"] != b["question"]
    assert _is_vietnamese(vi.system_prompt) and not _is_vietnamese(en.system_prompt)


@pytest.mark.parametrize("domain", DOMAINS)
def test_batch_is_a_pure_function_of_seed_and_step(domain):
    env = make_domain_env(domain, seed=5, difficulty=2)
    assert env.batch(4, 8) == env.batch(4, 8) == make_domain_env(domain, seed=5, difficulty=2).batch(4, 8)
    assert env.batch(4, 8) != env.batch(5, 8)
    assert env.batch(4, 8) != make_domain_env(domain, seed=6, difficulty=2).batch(4, 8)
    assert env.batch(4, 3) == env.batch(4, 8)[:3]
    assert env.eval_rows(5) == env.eval_rows(8)[:5]


@pytest.mark.parametrize("domain,difficulty", [(d, k) for d in DOMAINS for k in LEVELS])
def test_eval_rows_are_held_out_from_training(domain, difficulty):
    env = make_domain_env(domain, seed=0, difficulty=difficulty)
    key = lambda r: (r["task"], sorted(r["params"].items()))  # noqa: E731
    train = {repr(key(r)) for r in _rows(env, steps=30)}
    held = [repr(key(r)) for r in env.eval_rows(32)]
    assert len(set(held)) > 8
    assert not train & set(held)


@pytest.mark.parametrize("cls", [MedicalEnv, LegalEnv, FinancialEnv])
def test_system_prompt_and_solution_text_use_the_tags(cls):
    tags = {"reasoning_start": "<r>", "reasoning_end": "</r>", "solution_start": "<s>", "solution_end": "</s>"}
    for language, difficulty in ((lang, k) for lang in LANGS for k in (0, 3)):
        env = cls(difficulty=difficulty, language=language, **tags)
        assert all(t in env.system_prompt for t in tags.values())
        assert (env.reasoning_start, env.reasoning_end, env.solution_start, env.solution_end) == tuple(tags.values())
        for row in env.batch(0, 12):
            text = env.solution_text(row)
            assert text.startswith(f"<r>{row['reasoning']}</r>")
            assert re.fullmatch(r".*<s>(.*)</s>", text).group(1) == row["answer"]
    default = cls()
    assert "<think>" in default.system_prompt and "<answer>" in default.system_prompt
    assert cls(system_prompt="Be brief.").batch(0, 1)[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_system_prompts_name_the_answer_format():
    assert "unit" in MedicalEnv().system_prompt
    assert "YYYY-MM-DD" in LegalEnv().system_prompt and "YYYY-MM-DD" in LegalEnv(language="vi").system_prompt
    assert "rounded" in FinancialEnv().system_prompt


@pytest.mark.parametrize("cls", [MedicalEnv, LegalEnv, FinancialEnv])
def test_bad_arguments_name_the_field(cls):
    for bad in (-1, 4, "1"):
        with pytest.raises(ValueError, match="difficulty"):
            cls(difficulty=bad)
    for bad in ("fr", "EN", ""):
        with pytest.raises(ValueError, match="language"):
            cls(language=bad)


# The rows of a difficulty-0 table as shown: (separator, one entry's pattern; group 1 is the name as
# written), for entries [key, name, value].
TABLE_LAYOUT = {
    "medical": (", ", lambda e: rf"({re.escape(e[0])}) {re.escape(str(e[1]))}"),
    "legal": ("; ", lambda e: rf"{e[0]} (.+?) \${e[2]}"),
    "financial": (", ", lambda e: rf"{e[0]} (.+?) {re.escape(str(e[2]))}%"),
}


@pytest.mark.parametrize("domain,language", [(d, lang) for d in DOMAINS for lang in LANGS])
def test_table_questions_show_every_entry_and_contain_the_answer(domain, language):
    env = make_domain_env(domain, seed=11, difficulty=0, language=language)
    rows = _rows(env, steps=40)
    orders = set()
    for row in rows:
        table, q = row["params"]["table"], row["question"]
        assert 3 <= len(table) <= 5
        for column in range(len(table[0])):
            assert len({e[column] for e in table}) == len(table), table  # keys, names and values distinct
        sep, entry = TABLE_LAYOUT[domain]
        shown = re.search(": " + re.escape(sep).join(entry(e) for e in table) + r"\. ", q)
        assert shown, (table, q)
        titles = shown.groups()
        assert all(titles) and len(set(titles)) == len(titles), titles
        if language == "en":
            assert all(e[-2].replace("_", " ") in t for e, t in zip(table, titles, strict=True)), (table, titles)
        asked = row["params"]["asked"]
        if row["params"]["kind"] in ("forward", "article"):  # the name asked about is written as in the table
            assert titles[[e[-2] for e in table].index(asked)] in q[shown.end() :], q
        assert row["answer"] in q, (row["answer"], q)
        orders.add(tuple(sorted(range(len(table)), key=lambda i: table[i][-1])))
    assert len(orders) > 10  # entries are not listed by value


@pytest.mark.parametrize("domain", DOMAINS)
def test_table_kinds_mix_and_vocabulary(domain):
    rows = [r for s in range(250) for r in make_domain_env(domain, seed=4, difficulty=0).batch(s, 8)]
    kinds = [r["params"]["kind"] for r in rows]
    share = {k: kinds.count(k) / len(kinds) for k in set(kinds)}
    assert share["forward"] == pytest.approx(0.6, abs=0.05)
    assert share["reverse"] + share.get("article", 0) == pytest.approx(0.3, abs=0.05)
    assert share["pick"] == pytest.approx(0.1, abs=0.03)
    assert ("article" in share) == (domain == "legal")
    assert {r["params"]["asked"] for r in rows if r["params"]["kind"] == "pick"} == {"highest", "lowest"}
    names = {e[-2] for r in rows for e in r["params"]["table"]}
    assert 8 <= len(names) <= 12, names


@pytest.mark.parametrize("cls", [MedicalEnv, LegalEnv, FinancialEnv])
def test_table_system_prompt_does_not_ask_for_a_number_only(cls):
    for language in LANGS:
        level0 = cls(difficulty=0, language=language).system_prompt
        assert "number only" not in level0 and "chỉ ghi số" not in level0, level0
        assert "<think>" in level0 and "<answer>" in level0
        assert _is_vietnamese(level0) == (language == "vi")
        assert {cls(difficulty=k, language=language).system_prompt for k in (1, 2, 3)} == {
            cls(language=language).system_prompt
        }
        assert cls(language=language).system_prompt != level0
    assert "name" in MedicalEnv(difficulty=0).system_prompt and "code" in FinancialEnv(difficulty=0).system_prompt
    assert "article number" in LegalEnv(difficulty=0).system_prompt


def test_registry():
    assert DOMAIN_ENVS == {"medical": MedicalEnv, "legal": LegalEnv, "financial": FinancialEnv}
    env = make_domain_env("financial", seed=2, difficulty=3, language="vi")
    assert isinstance(env, FinancialEnv) and (env.seed, env.difficulty, env.language) == (2, 3, "vi")
    with pytest.raises(ValueError, match="medical"):
        make_domain_env("tax")
