"""Built-in task: reading a rate sheet, and short money calculations (simple and compound interest,
loan payment, % change).

Like ``envs/arithmetic.py``: questions are short (<= 110 characters in English, <= 150 for a rate
sheet; byte-level model),
``batch`` draws from ``random.Random(f"{seed}:{step}")`` and ``eval_rows`` from ``f"{seed}:eval"``;
one parameter set in ``HOLDOUT`` is reserved for eval. Rows carry ``params`` (the inputs shown in
the question). Answers are computed exactly (``fractions.Fraction``, the annuity formula included)
and rounded half away from zero as the question says.

Difficulty levels:

0. facts in the prompt: a rate sheet of 3-5 products (from ``PRODUCTS``, each shown with its code)
   at distinct yearly rates, in a random order; the rate of a named product (the number as
   written), the code of the product at a given rate, or the code with the highest or lowest rate
   (codes, not product names, so answers are the same in English and Vietnamese);
1. simple interest (whole dollars, exact); compound interest, annual, 2 years (whole dollars);
   percentage change (a whole percent, exact);
2. simple-interest total (2 decimals); compound amount, 2-5 years (2 decimals); loan monthly
   payment over 12 or 24 months (2 decimals); percentage change (1 decimal);
3. compound interest earned, 3-10 years at half-percent rates (2 decimals); loan payment over up
   to 30 years (2 decimals); percentage change (1 decimal).
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

from envs.task import Draw, GeneratedTaskEnv, round_half_up, table_kind
from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

DIFFICULTIES = (0, 1, 2, 3)
LANGUAGES = ("en", "vi")
HOLDOUT = 10  # one parameter set in HOLDOUT is eval-only

TASKS: dict[int, tuple[str, ...]] = {
    1: ("simple", "compound", "percent"),
    2: ("simple", "compound", "loan", "percent"),
    3: ("compound", "loan", "percent"),
}

# Difficulty 0: a rate sheet of 3-5 of these products (key -> code, name by language), each at a
# distinct rate of RATE_TENTHS tenths of a percent (0.5% .. 19.9%, shown as an int when whole).
TABLE_TASK = "rate_table"
PRODUCTS: dict[str, tuple[str, dict[str, str]]] = {
    "savings": ("SV", {"en": "savings", "vi": "tiết kiệm"}),
    "deposit": ("TD", {"en": "deposit", "vi": "tiền gửi"}),
    "loan": ("LN", {"en": "loan", "vi": "khoản vay"}),
    "mortgage": ("MG", {"en": "mortgage", "vi": "vay thế chấp"}),
    "car_loan": ("CL", {"en": "car loan", "vi": "vay mua xe"}),
    "card": ("CC", {"en": "card", "vi": "thẻ tín dụng"}),
    "bond": ("BD", {"en": "bond", "vi": "trái phiếu"}),
    "overdraft": ("OD", {"en": "overdraft", "vi": "thấu chi"}),
    "fund": ("FD", {"en": "fund", "vi": "quỹ"}),
    "pension": ("PN", {"en": "pension", "vi": "hưu trí"}),
}
RATE_TENTHS = range(5, 200)

# Difficulty-0 wording by language: the sheet, then one question per kind (pick: highest or lowest).
_TABLE_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "table": "Rates: {items}.",
        "forward": " Rate of {asked} in %?",
        "reverse": " Which code has a {asked}% rate?",
        "highest": " Which code has the highest rate?",
        "lowest": " Which code has the lowest rate?",
    },
    "vi": {
        "table": "Lãi suất: {items}.",
        "forward": " Lãi suất {asked} là bao nhiêu %?",
        "reverse": " Mã nào có lãi suất {asked}%?",
        "highest": " Mã nào có lãi suất cao nhất?",
        "lowest": " Mã nào có lãi suất thấp nhất?",
    },
}

_DEC = {
    "en": {0: "whole number", 1: "1 decimal", 2: "2 decimals"},
    "vi": {0: "số nguyên", 1: "1 chữ số thập phân", 2: "2 chữ số thập phân"},
}

# Question templates by (template, language); fields come from ``params`` plus ``dec`` (rounding).
_TEMPLATES: dict[str, dict[str, str]] = {
    "simple_interest": {
        "en": "Simple interest on ${p} at {rate}% a year for {years} years. Interest in $?",
        "vi": "Lãi đơn của ${p}, lãi suất {rate}%/năm trong {years} năm. Tiền lãi bao nhiêu $?",
    },
    "simple_total": {
        "en": "${p} at {rate}% simple interest for {years} years. Total in $ ({dec})?",
        "vi": "Gửi ${p}, lãi đơn {rate}%/năm trong {years} năm. Tổng tiền bao nhiêu $ ({dec})?",
    },
    "compound_total": {
        "en": "${p} at {rate}% compounded yearly for {years} years. Amount in $ ({dec})?",
        "vi": "Gửi ${p}, lãi kép {rate}%/năm trong {years} năm. Tổng tiền bao nhiêu $ ({dec})?",
    },
    "compound_interest": {
        "en": "${p} at {rate}% compounded yearly for {years} years. Interest earned in $ ({dec})?",
        "vi": "Gửi ${p}, lãi kép {rate}%/năm trong {years} năm. Tiền lãi bao nhiêu $ ({dec})?",
    },
    "loan": {
        "en": "Loan ${p} at {rate}% a year, {months} monthly payments. Payment in $ ({dec})?",
        "vi": "Vay ${p}, lãi {rate}%/năm, trả đều {months} tháng. Mỗi tháng trả bao nhiêu $ ({dec})?",
    },
    "percent": {
        "en": "A price went from ${old} to ${new}. Percent change ({dec})?",
        "vi": "Giá đổi từ ${old} thành ${new}. Thay đổi bao nhiêu % ({dec})?",
    },
}


def default_system_prompt(
    reasoning_start: str = REASONING_START,
    reasoning_end: str = REASONING_END,
    solution_start: str = SOLUTION_START,
    solution_end: str = SOLUTION_END,
    language: str = "en",
    difficulty: int = 1,
) -> str:
    """The financial default instruction built from the tags (at difficulty 0 the answer can be a code).

    >>> default_system_prompt()
    'Finance math. Reply as <think>work</think><answer>number</answer>: the number only, no $ or %, rounded as asked.'
    >>> default_system_prompt(difficulty=0)
    'Read the rate sheet. Reply as <think>work</think><answer>X</answer>: X is the value or code only, no %, as written.'
    """
    if difficulty == 0:
        reply = f"{reasoning_start}work{reasoning_end}{solution_start}X{solution_end}"
        if language == "vi":
            return (
                f"Đọc bảng lãi suất. Trả lời dạng {reply}: X chỉ ghi giá trị hoặc mã, không ghi %, đúng như trong bảng."
            )
        return f"Read the rate sheet. Reply as {reply}: X is the value or code only, no %, as written."
    reply = f"{reasoning_start}work{reasoning_end}{solution_start}number{solution_end}"
    if language == "vi":
        return f"Toán tài chính. Trả lời dạng {reply}: chỉ ghi số, không ghi $ hay %, làm tròn như yêu cầu."
    return f"Finance math. Reply as {reply}: the number only, no $ or %, rounded as asked."


def annuity_payment(principal: Fraction, annual_rate_pct: Fraction, months: int) -> Fraction:
    """Exact monthly payment ``P*i / (1 - (1+i)^-n)`` with ``i = rate / 12``.

    >>> float(annuity_payment(Fraction(1200), Fraction(0), 12))
    100.0
    """
    i = annual_rate_pct / 1200
    if i == 0:
        return principal / months
    return principal * i / (1 - (1 + i) ** -months)


def _rate(rng: random.Random, lo: int, hi: int, halves: bool) -> int | float:
    """A yearly rate in percent from lo..hi, in steps of 0.5 when ``halves`` (an int when whole)."""
    if not halves:
        return rng.randint(lo, hi)
    r = rng.randint(2 * lo, 2 * hi) / 2
    return int(r) if r.is_integer() else r


def _rate_table(rng: random.Random, language: str) -> Draw:
    """A difficulty-0 draw: ``(task, question, params, answer, reasoning)``; ``params`` holds the sheet as
    ``[code, product, rate]`` in the order shown, the question ``kind`` and what it ``asked``."""
    text = _TABLE_TEXT[language]
    k = rng.randint(3, 5)
    products, tenths = rng.sample(tuple(PRODUCTS), k), rng.sample(RATE_TENTHS, k)
    table: list[list[Any]] = [[PRODUCTS[p][0], p, t // 10 if t % 10 == 0 else t / 10] for p, t in zip(products, tenths)]
    entries = [f"{code} {PRODUCTS[p][1][language]} {rate}%" for code, p, rate in table]
    kind = table_kind(rng)
    if kind == "pick":
        asked = rng.choice(("highest", "lowest"))
        i = (max if asked == "highest" else min)(range(k), key=lambda j: table[j][2])
        answer, ask = table[i][0], text[asked]
        reasoning = f"{'max' if asked == 'highest' else 'min'}: {entries[i]}"
    else:
        i = rng.randrange(k)
        code, product, rate = table[i]
        asked, answer = (product, str(rate)) if kind == "forward" else (rate, code)
        reasoning = entries[i]
        ask = text[kind].format(asked=PRODUCTS[product][1][language] if kind == "forward" else rate)
    question = text["table"].format(items=", ".join(entries)) + ask
    return TABLE_TASK, question, {"table": table, "kind": kind, "asked": asked}, answer, reasoning


def _draw(rng: random.Random, task: str, difficulty: int) -> tuple[str, dict, int, str, str]:
    """Draw ``(template, params, decimals, answer, reasoning)`` for ``task`` at ``difficulty``."""
    rate: int | float  # a yearly rate in percent (``_rate``)
    if task == "simple":
        if difficulty == 1:
            p, rate, years = rng.randrange(100, 5100, 100), rng.randint(1, 10), rng.randint(2, 5)
            interest = Fraction(p * rate * years, 100)
            answer = round_half_up(interest)
            return "simple_interest", {"p": p, "rate": rate, "years": years}, 0, answer, f"{p}*{rate}%*{years}={answer}"
        p, rate, years = rng.randrange(50, 10050, 50), _rate(rng, 1, 12, True), rng.randint(2, 10)
        answer = round_half_up(p * (1 + Fraction(str(rate)) * years / 100), 2)
        return "simple_total", {"p": p, "rate": rate, "years": years}, 2, answer, f"{p}+{p}*{rate}%*{years}={answer}"
    if task == "compound":
        p = rng.randrange(100, 10100, 100)
        rate = _rate(rng, 1, 10, difficulty == 3)
        years = 2 if difficulty == 1 else rng.randint(2, 5) if difficulty == 2 else rng.randint(3, 10)
        amount = p * (1 + Fraction(str(rate)) / 100) ** years
        growth = f"{p}*{1 + rate / 100:g}^{years}"
        params = {"p": p, "rate": rate, "years": years}
        if difficulty < 3:
            places = 0 if difficulty == 1 else 2
            answer = round_half_up(amount, places)
            return "compound_total", params, places, answer, f"{growth}~{answer}"
        answer = round_half_up(amount - p, 2)
        return "compound_interest", params, 2, answer, f"{growth}-{p}~{answer}"
    if task == "loan":
        if difficulty == 2:
            p, rate, months = rng.randrange(1000, 20500, 500), rng.randint(2, 12), rng.choice((12, 24))
        else:
            p, rate = rng.randrange(5000, 305000, 5000), _rate(rng, 3, 12, True)
            months = rng.choice((36, 48, 60, 120, 180, 240, 360))
        answer = round_half_up(annuity_payment(Fraction(p), Fraction(str(rate)), months), 2)
        reasoning = f"i={rate}/1200;{p}*i/(1-(1+i)^-{months})~{answer}"
        return "loan", {"p": p, "rate": rate, "months": months}, 2, answer, reasoning
    if difficulty == 1:
        old = rng.choice((20, 25, 40, 50, 80, 100, 200, 250, 400, 500))
        step = Fraction(100, old).numerator  # 100 / gcd(100, old): the smallest % change giving whole dollars
        change = rng.choice([k for k in range(-60, 101, step) if k != 0])
        new = old + old * change // 100
        return "percent", {"old": old, "new": new}, 0, str(change), f"({new}-{old})/{old}*100={change}"
    old = rng.randint(10, 999) if difficulty == 2 else rng.randint(100, 9999)
    new = max(1, round(old * rng.uniform(0.3, 2.5)))
    while new == old:
        new += 1
    answer = round_half_up(Fraction(new - old, old) * 100, 1)
    return "percent", {"old": old, "new": new}, 1, answer, f"({new}-{old})/{old}*100~{answer}"


class FinancialEnv(GeneratedTaskEnv):
    """Money calculations; rows carry ``question``, ``answer``, ``reasoning``, ``params`` and more."""

    domain = "financial"
    DIFFICULTIES, LANGUAGES, HOLDOUT = DIFFICULTIES, LANGUAGES, HOLDOUT

    prompt_template = staticmethod(default_system_prompt)

    def draw(self, rng: random.Random) -> Draw:
        """Draw ``(task, question, params, answer, reasoning)`` from ``rng``."""
        if self.difficulty == 0:
            return _rate_table(rng, self.language)
        task = rng.choice(TASKS[self.difficulty])
        template, params, places, answer, reasoning = _draw(rng, task, self.difficulty)
        question = _TEMPLATES[template][self.language].format(dec=_DEC[self.language][places], **params)
        return template, question, params, answer, reasoning
