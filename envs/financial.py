"""Built-in task: short money calculations (simple and compound interest, loan payment, % change).

Like ``envs/arithmetic.py``: questions are short (<= 110 characters in English, byte-level model),
``batch`` draws from ``random.Random(f"{seed}:{step}")`` and ``eval_rows`` from ``f"{seed}:eval"``;
one parameter set in ``HOLDOUT`` is reserved for eval. Rows carry ``params`` (the inputs shown in
the question). Answers are computed exactly (``fractions.Fraction``, the annuity formula included)
and rounded half away from zero as the question says.

Difficulty levels:

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

from envs.task import Draw, GeneratedTaskEnv, round_half_up

DIFFICULTIES = (1, 2, 3)
LANGUAGES = ("en", "vi")
HOLDOUT = 10  # one parameter set in HOLDOUT is eval-only

TASKS: dict[int, tuple[str, ...]] = {
    1: ("simple", "compound", "percent"),
    2: ("simple", "compound", "loan", "percent"),
    3: ("compound", "loan", "percent"),
}

_DEC = {"en": {0: "whole number", 1: "1 decimal", 2: "2 decimals"},
        "vi": {0: "số nguyên", 1: "1 chữ số thập phân", 2: "2 chữ số thập phân"}}

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
    reasoning_start: str = "<think>",
    reasoning_end: str = "</think>",
    solution_start: str = "<answer>",
    solution_end: str = "</answer>",
    language: str = "en",
) -> str:
    """The financial default instruction built from the tags.

    >>> default_system_prompt()
    'Finance math. Reply as <think>work</think><answer>number</answer>: the number only, no $ or %, rounded as asked.'
    """
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


def _draw(rng: random.Random, task: str, difficulty: int) -> tuple[str, dict, int, str, str]:
    """Draw ``(template, params, decimals, answer, reasoning)`` for ``task`` at ``difficulty``."""
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

    def default_prompt(self) -> str:
        """``default_system_prompt`` built from this env's tags, in its language."""
        return default_system_prompt(
            self.reasoning_start, self.reasoning_end, self.solution_start, self.solution_end, self.language
        )

    def draw(self, rng: random.Random) -> Draw:
        """Draw ``(task, question, params, answer, reasoning)`` from ``rng``."""
        task = rng.choice(TASKS[self.difficulty])
        template, params, places, answer, reasoning = _draw(rng, task, self.difficulty)
        question = _TEMPLATES[template][self.language].format(dec=_DEC[self.language][places], **params)
        return template, question, params, answer, reasoning
