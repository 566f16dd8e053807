"""Built-in task: reading a dose table, and short clinical calculations (dose by weight, infusion rate,
unit conversion, BMI).

Like ``envs/arithmetic.py``: questions are short (<= 110 characters in English, <= 150 for a dose
table) because the built-in model is byte-level; ``batch`` draws from
``random.Random(f"{seed}:{step}")`` and ``eval_rows`` from ``f"{seed}:eval"``. One parameter set in
``HOLDOUT`` (by a CRC of the task and its parameters) is reserved for eval, so a training row never
repeats an eval question.

Every row carries ``params``, the raw inputs shown in the question, so a checker can recompute the
answer. Answers are exact (``fractions.Fraction``) then rounded half away from zero as the question
says; integers where the question asks for a whole number.

Difficulty levels:

0. facts in the prompt: a table of 3-5 drugs (from ``DRUGS``) with their doses in mg/kg, in a
   random order; the dose of a named drug (the number as written), the drug with a given dose, or
   the drug with the highest or lowest dose (drug names are the same in English and Vietnamese);
1. dose = mg/kg x kg; infusion mL/h = mL / h (exact); g -> mg, L -> mL;
2. dose capped at a maximum; mL/h rounded to whole; mg -> g, mL -> L, lb -> kg (1 kg = 2.2 lb,
   1 decimal); BMI = kg / m^2 (1 decimal);
3. mg/kg/day split into doses (whole mg); drops/min with a drop factor (whole); mcg -> mg,
   lb -> kg; BMI with height in cm.
"""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction
from typing import Any

from envs.task import Draw, GeneratedTaskEnv, round_half_up, table_kind
from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

DIFFICULTIES = (0, 1, 2, 3)
LANGUAGES = ("en", "vi")
HOLDOUT = 10  # one parameter set in HOLDOUT is eval-only

TASKS: dict[int, tuple[str, ...]] = {
    1: ("dose", "infusion", "convert"),
    2: ("dose", "infusion", "convert", "bmi"),
    3: ("dose", "infusion", "convert", "bmi"),
}

# Difficulty 0: a dose table of 3-5 of these drugs, each with a distinct dose from DOSES_MG_PER_KG.
TABLE_TASK = "dose_table"
DRUGS = (
    "ibuprofen",
    "paracetamol",
    "amoxicillin",
    "cefalexin",
    "azithromycin",
    "gentamicin",
    "vancomycin",
    "ceftriaxone",
    "acyclovir",
    "ondansetron",
)
DOSES_MG_PER_KG: tuple[int | float, ...] = (1, 2, 2.5, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50, 75, 100)

# Difficulty-0 wording by language: the table, then one question per kind (pick: highest or lowest).
_TABLE_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "table": "Doses in mg/kg: {items}.",
        "forward": " Dose of {asked} in mg/kg?",
        "reverse": " Which drug is dosed at {asked} mg/kg?",
        "highest": " Which drug has the highest dose?",
        "lowest": " Which drug has the lowest dose?",
    },
    "vi": {
        "table": "Liều (mg/kg): {items}.",
        "forward": " Liều {asked} là bao nhiêu mg/kg?",
        "reverse": " Thuốc nào có liều {asked} mg/kg?",
        "highest": " Thuốc nào có liều cao nhất?",
        "lowest": " Thuốc nào có liều thấp nhất?",
    },
}

# Question templates by (task variant, language); ``{x}`` fields come from the row's ``params``.
_TEMPLATES: dict[str, dict[str, str]] = {
    "dose": {
        "en": "Patient weighs {kg} kg; dose {mg_per_kg} mg/kg. Total dose in mg?",
        "vi": "Bệnh nhân nặng {kg} kg, liều {mg_per_kg} mg/kg. Tổng liều bao nhiêu mg?",
    },
    "dose_cap": {
        "en": "Patient weighs {kg} kg; dose {mg_per_kg} mg/kg, max {max_mg} mg. Dose in mg?",
        "vi": "Bệnh nhân nặng {kg} kg, liều {mg_per_kg} mg/kg, tối đa {max_mg} mg. Liều bao nhiêu mg?",
    },
    "dose_split": {
        "en": "Child weighs {kg} kg; {mg_per_kg} mg/kg/day in {doses} doses. mg per dose (whole number)?",
        "vi": "Trẻ nặng {kg} kg, {mg_per_kg} mg/kg/ngày chia {doses} lần. Mỗi lần bao nhiêu mg (số nguyên)?",
    },
    "rate": {
        "en": "Infuse {ml} mL over {hours} h. Rate in mL/h?",
        "vi": "Truyền {ml} mL trong {hours} giờ. Tốc độ bao nhiêu mL/giờ?",
    },
    "rate_round": {
        "en": "Infuse {ml} mL over {hours} h. Rate in mL/h (whole number)?",
        "vi": "Truyền {ml} mL trong {hours} giờ. Tốc độ bao nhiêu mL/giờ (số nguyên)?",
    },
    "drops": {
        "en": "Infuse {ml} mL over {hours} h; drop factor {drops_per_ml} drops/mL. Drops/min (whole number)?",
        "vi": "Truyền {ml} mL trong {hours} giờ, {drops_per_ml} giọt/mL. Bao nhiêu giọt/phút (số nguyên)?",
    },
    "g_to_mg": {"en": "Convert {g} g to mg.", "vi": "Đổi {g} g sang mg."},
    "l_to_ml": {"en": "Convert {l} L to mL.", "vi": "Đổi {l} L sang mL."},
    "mg_to_g": {"en": "Convert {mg} mg to g.", "vi": "Đổi {mg} mg sang g."},
    "ml_to_l": {"en": "Convert {ml} mL to L.", "vi": "Đổi {ml} mL sang L."},
    "mcg_to_mg": {"en": "Convert {mcg} mcg to mg.", "vi": "Đổi {mcg} mcg sang mg."},
    "lb_to_kg": {
        "en": "Convert {lb} lb to kg (1 kg = 2.2 lb), 1 decimal.",
        "vi": "Đổi {lb} lb sang kg (1 kg = 2.2 lb), 1 chữ số thập phân.",
    },
    "bmi_m": {
        "en": "Weight {kg} kg, height {m} m. BMI in kg/m^2 (1 decimal)?",
        "vi": "Cân nặng {kg} kg, chiều cao {m} m. BMI bao nhiêu kg/m^2 (1 chữ số thập phân)?",
    },
    "bmi_cm": {
        "en": "Weight {kg} kg, height {cm} cm. BMI in kg/m^2 (1 decimal)?",
        "vi": "Cân nặng {kg} kg, chiều cao {cm} cm. BMI bao nhiêu kg/m^2 (1 chữ số thập phân)?",
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
    """The medical default instruction built from the tags (at difficulty 0 the answer can be a name).

    >>> default_system_prompt()
    'Medical calculation. Reply as <think>work</think><answer>number</answer>: the number only, in the unit asked, rounded as asked.'
    >>> default_system_prompt(difficulty=0)
    'Read the dose table. Reply as <think>work</think><answer>X</answer>: X is the value or name only, as written in the table.'
    """
    if difficulty == 0:
        reply = f"{reasoning_start}work{reasoning_end}{solution_start}X{solution_end}"
        if language == "vi":
            return f"Đọc bảng liều. Trả lời dạng {reply}: X chỉ ghi giá trị hoặc tên, đúng như trong bảng."
        return f"Read the dose table. Reply as {reply}: X is the value or name only, as written in the table."
    reply = f"{reasoning_start}work{reasoning_end}{solution_start}number{solution_end}"
    if language == "vi":
        return f"Tính toán y khoa. Trả lời dạng {reply}: chỉ ghi số, theo đơn vị và cách làm tròn được hỏi."
    return f"Medical calculation. Reply as {reply}: the number only, in the unit asked, rounded as asked."


def _exact(x: Fraction) -> str:
    """A terminating fraction as the shortest decimal text: ``Fraction(1, 4)`` -> ``'0.25'``."""
    return format(Decimal(x.numerator) / Decimal(x.denominator), "f")


def _decimal(numerator: int, denominator: int) -> int | float:
    """``numerator / denominator`` as an int when whole, else a float (for ``params``)."""
    q = Fraction(numerator, denominator)
    return int(q) if q.denominator == 1 else float(q)


def _dose_table(rng: random.Random, language: str) -> Draw:
    """A difficulty-0 draw: ``(task, question, params, answer, reasoning)``; ``params`` holds the table as
    ``[drug, mg/kg]`` pairs in the order shown, the question ``kind`` and what it ``asked``."""
    text = _TABLE_TEXT[language]
    drugs = rng.sample(DRUGS, rng.randint(3, 5))
    table: list[list[Any]] = [[drug, dose] for drug, dose in zip(drugs, rng.sample(DOSES_MG_PER_KG, len(drugs)))]
    kind = table_kind(rng)
    if kind == "pick":
        asked = rng.choice(("highest", "lowest"))
        drug, dose = (max if asked == "highest" else min)(table, key=lambda entry: entry[1])
        answer, reasoning, ask = drug, f"{'max' if asked == 'highest' else 'min'}: {drug} {dose}", text[asked]
    else:
        drug, dose = rng.choice(table)
        asked, answer = (drug, str(dose)) if kind == "forward" else (dose, drug)
        reasoning, ask = f"{drug} {dose}", text[kind].format(asked=asked)
    question = text["table"].format(items=", ".join(f"{d} {v}" for d, v in table)) + ask
    return TABLE_TASK, question, {"table": table, "kind": kind, "asked": asked}, answer, reasoning


def _draw(rng: random.Random, task: str, difficulty: int) -> tuple[str, dict, str, str]:
    """Draw ``(template, params, answer, reasoning)`` for ``task`` at ``difficulty``."""
    if task == "dose":
        if difficulty == 1:
            kg, per = rng.randint(3, 60), rng.randint(2, 20)
            return "dose", {"kg": kg, "mg_per_kg": per}, str(kg * per), f"{kg}*{per}={kg * per}"
        if difficulty == 2:
            kg, per = rng.randint(10, 90), rng.randint(5, 25)
            cap = max(50, round(kg * per * rng.uniform(0.6, 1.4) / 50) * 50)
            dose = min(kg * per, cap)
            return (
                "dose_cap",
                {"kg": kg, "mg_per_kg": per, "max_mg": cap},
                str(dose),
                f"{kg}*{per}={kg * per};max {cap}->{dose}",
            )
        kg, per, doses = rng.randint(4, 40), rng.randint(10, 60), rng.choice((2, 3, 4))
        answer = round_half_up(Fraction(kg * per, doses))
        return "dose_split", {"kg": kg, "mg_per_kg": per, "doses": doses}, answer, f"{kg}*{per}/{doses}={answer}"
    if task == "infusion":
        if difficulty == 1:
            rate, hours = rng.randrange(10, 255, 5), rng.randint(1, 12)
            return "rate", {"ml": rate * hours, "hours": hours}, str(rate), f"{rate * hours}/{hours}={rate}"
        ml, hours = rng.choice((100, 250, 500, 750, 1000, 1500, 2000, 3000)), rng.randint(2, 24)
        if difficulty == 2:
            answer = round_half_up(Fraction(ml, hours))
            return "rate_round", {"ml": ml, "hours": hours}, answer, f"{ml}/{hours}~{answer}"
        factor = rng.choice((10, 15, 20, 60))
        answer = round_half_up(Fraction(ml * factor, hours * 60))
        params = {"ml": ml, "hours": hours, "drops_per_ml": factor}
        return "drops", params, answer, f"{ml}*{factor}/({hours}*60)~{answer}"
    if task == "convert":
        choices = {1: ("g_to_mg", "l_to_ml"), 2: ("mg_to_g", "ml_to_l", "lb_to_kg"), 3: ("mcg_to_mg", "lb_to_kg")}
        kind = rng.choice(choices[difficulty])
        if kind in ("g_to_mg", "l_to_ml"):
            tenths = rng.randint(1, 50)
            value, key = _decimal(tenths, 10), "g" if kind == "g_to_mg" else "l"
            return kind, {key: value}, str(tenths * 100), f"{value}*1000={tenths * 100}"
        if kind in ("mg_to_g", "ml_to_l"):
            small = rng.randrange(50, 5050, 50)
            answer = _exact(Fraction(small, 1000))
            return kind, {"mg" if kind == "mg_to_g" else "ml": small}, answer, f"{small}/1000={answer}"
        if kind == "mcg_to_mg":
            mcg = rng.randrange(25, 2525, 25)
            answer = _exact(Fraction(mcg, 1000))
            return kind, {"mcg": mcg}, answer, f"{mcg}/1000={answer}"
        lb = rng.randint(5, 280)
        answer = round_half_up(Fraction(lb * 10, 22), 1)
        return kind, {"lb": lb}, answer, f"{lb}/2.2~{answer}"
    kg, cm = rng.randint(40, 130), rng.randint(145, 200)
    answer = round_half_up(Fraction(kg * 10_000, cm * cm), 1)
    if difficulty == 2:
        m = _decimal(cm, 100)
        return "bmi_m", {"kg": kg, "m": m}, answer, f"{kg}/{m}^2~{answer}"
    return "bmi_cm", {"kg": kg, "cm": cm}, answer, f"{kg}/{cm / 100}^2~{answer}"


class MedicalEnv(GeneratedTaskEnv):
    """Clinical calculations; rows carry ``question``, ``answer``, ``reasoning``, ``params`` and more."""

    domain = "medical"
    DIFFICULTIES, LANGUAGES, HOLDOUT = DIFFICULTIES, LANGUAGES, HOLDOUT

    prompt_template = staticmethod(default_system_prompt)

    def draw(self, rng: random.Random) -> Draw:
        """Draw ``(task, question, params, answer, reasoning)`` from ``rng``."""
        if self.difficulty == 0:
            return _dose_table(rng, self.language)
        task = rng.choice(TASKS[self.difficulty])
        template, params, answer, reasoning = _draw(rng, task, self.difficulty)
        return template, _TEMPLATES[template][self.language].format(**params), params, answer, reasoning
