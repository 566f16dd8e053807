"""Built-in task: a toy rulebook — fines, appeal deadlines and which article applies.

Every question carries the rules it needs (the relevant excerpt of the fine table, the deadline in
days, the candidate articles with their titles), so the answer follows from the prompt alone. The
rulebook below is invented for training, not any real country's law.

Like ``envs/arithmetic.py``: short questions (<= 110 characters in English, <= 150 for a fine table;
byte-level model),
``batch`` from ``random.Random(f"{seed}:{step}")``, ``eval_rows`` from ``f"{seed}:eval"``, and one
parameter set in ``HOLDOUT`` reserved for eval. Rows carry ``params`` (the inputs in the question).

Answers: a fine as a whole number of dollars, a date as ``YYYY-MM-DD`` (calendar days, the start
day not counted: use ``answer_exact`` rather than ``answer_numeric`` for these), an article as its
number.

Difficulty levels:

0. facts in the prompt: an excerpt of 3-5 articles (random numbers 1-40, in order), each fining one
   offence from ``TABLE_OFFENCES`` a distinct amount; the fine for a named offence (as written), the
   article that covers a named offence or fines a given amount, or the article with the highest or
   lowest fine;
1. speeding fine from the vehicle's brackets and the km/h over; a deadline of 3-10 days;
   which of 2 articles applies;
2. speeding fine from the speed and the limit, or one offence among two listed; a 15-90 day
   deadline; which of 3 articles;
3. the total of two offences among three listed; a deadline counted from service, itself some
   days after the judgment; which of 4 articles.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from envs.task import Draw, GeneratedTaskEnv, table_kind
from rewards.text import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

DIFFICULTIES = (0, 1, 2, 3)
LANGUAGES = ("en", "vi")
HOLDOUT = 10  # one parameter set in HOLDOUT is eval-only
TASKS = ("fine", "deadline", "article")

# Speeding brackets in km/h over the limit: 1-10, 11-20, 21 and more.
SPEED_BRACKETS: tuple[tuple[int, int | None], ...] = ((1, 10), (11, 20), (21, None))

# Fines in dollars by vehicle: one per speeding bracket, and one per other offence.
SPEED_FINES: dict[str, tuple[int, int, int]] = {
    "car": (300, 800, 2000),
    "motorbike": (100, 300, 800),
    "truck": (500, 1200, 3000),
}
FINES: dict[str, dict[str, int]] = {
    "car": {"red_light": 1500, "no_seatbelt": 200, "phone": 600},
    "motorbike": {"red_light": 500, "no_helmet": 200, "phone": 250},
    "truck": {"red_light": 2000, "no_seatbelt": 300, "overload": 2500},
}

VEHICLES: dict[str, dict[str, str]] = {
    "car": {"en": "Car", "vi": "Ô tô"},
    "motorbike": {"en": "Motorbike", "vi": "Xe máy"},
    "truck": {"en": "Truck", "vi": "Xe tải"},
}

# Offence: (title in a fine table, what the driver did).
OFFENCES: dict[str, dict[str, tuple[str, str]]] = {
    "red_light": {"en": ("red light", "ran a red light"), "vi": ("đèn đỏ", "vượt đèn đỏ")},
    "no_seatbelt": {"en": ("no belt", "had no belt"), "vi": ("không thắt dây", "không thắt dây")},
    "no_helmet": {"en": ("no helmet", "had no helmet"), "vi": ("không mũ", "không đội mũ")},
    "phone": {"en": ("phone", "used a phone"), "vi": ("điện thoại", "dùng điện thoại")},
    "overload": {"en": ("overload", "was overloaded"), "vi": ("quá tải", "chở quá tải")},
}

# The rulebook: article number -> (topic, title by language, a case it covers by language).
ARTICLES: dict[int, tuple[str, dict[str, str], dict[str, str]]] = {
    3: (
        "speed",
        {"en": "speeding", "vi": "tốc độ"},
        {"en": "A car did 90 in a 60 zone.", "vi": "Ô tô chạy 90 km/h, giới hạn 60."},
    ),
    5: (
        "red_light",
        {"en": "red light", "vi": "đèn đỏ"},
        {"en": "A bus crossed on red.", "vi": "Xe buýt đi khi đèn đỏ."},
    ),
    6: (
        "helmet",
        {"en": "helmets", "vi": "mũ bảo hiểm"},
        {"en": "A rider had a bare head.", "vi": "Người đi xe máy để đầu trần."},
    ),
    8: (
        "seatbelt",
        {"en": "seatbelts", "vi": "dây an toàn"},
        {"en": "A driver was not buckled up.", "vi": "Tài xế không cài dây."},
    ),
    9: (
        "phone",
        {"en": "phones", "vi": "điện thoại"},
        {"en": "A driver texted while driving.", "vi": "Tài xế nhắn tin khi lái."},
    ),
    11: (
        "load",
        {"en": "overload", "vi": "quá tải"},
        {"en": "A truck carried 12 t, limit 8 t.", "vi": "Xe tải chở 12 tấn, phép 8 tấn."},
    ),
    12: (
        "alcohol",
        {"en": "alcohol", "vi": "nồng độ cồn"},
        {"en": "A driver failed a breath test.", "vi": "Tài xế có cồn trong hơi thở."},
    ),
    15: (
        "parking",
        {"en": "parking", "vi": "đỗ xe"},
        {"en": "A van stopped on a sidewalk.", "vi": "Xe van dừng trên vỉa hè."},
    ),
}

# Difficulty 0: an excerpt of 3-5 articles, numbered from ARTICLE_NUMBERS, each fining one of these
# offences (key -> title by language) an amount from TABLE_FINES (all above 40: never an article number).
TABLE_TASK = "fine_table"
TABLE_OFFENCES: dict[str, dict[str, str]] = {
    "parking": {"en": "parking", "vi": "đỗ xe sai"},
    "noise": {"en": "noise", "vi": "gây ồn"},
    "littering": {"en": "littering", "vi": "xả rác"},
    "speeding": {"en": "speeding", "vi": "quá tốc độ"},
    "red_light": {"en": "red light", "vi": "vượt đèn đỏ"},
    "no_helmet": {"en": "no helmet", "vi": "không đội mũ"},
    "no_seatbelt": {"en": "no seatbelt", "vi": "không thắt dây"},
    "phone": {"en": "phone use", "vi": "dùng điện thoại"},
    "alcohol": {"en": "alcohol", "vi": "nồng độ cồn"},
    "overload": {"en": "overload", "vi": "quá tải"},
    "jaywalking": {"en": "jaywalking", "vi": "sang đường ẩu"},
    "graffiti": {"en": "graffiti", "vi": "vẽ bậy"},
}
ARTICLE_NUMBERS = range(1, 41)
TABLE_FINES = range(50, 510, 10)

# Difficulty-0 wording by language: the excerpt, one entry, then one question per kind.
_TABLE_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "table": "Fines by article: {items}.",
        "entry": "{n} {offence} ${fine}",
        "forward": " Fine for {asked} in $?",
        "article": " Which article covers {asked}?",
        "reverse": " Which article fines ${asked}?",
        "highest": " Which article has the highest fine?",
        "lowest": " Which article has the lowest fine?",
    },
    "vi": {
        "table": "Phạt theo điều: {items}.",
        "entry": "{n} {offence} ${fine}",
        "forward": " Phạt {asked} bao nhiêu $?",
        "article": " Điều nào quy định {asked}?",
        "reverse": " Điều nào phạt ${asked}?",
        "highest": " Điều nào phạt cao nhất?",
        "lowest": " Điều nào phạt thấp nhất?",
    },
}

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "speed_table": "{Vehicle} fine by km/h over: 1-10 ${f1}, 11-20 ${f2}, 21+ ${f3}.",
        "over": " It went {over} km/h over. Fine in $?",
        "speed_limit": " It drove {speed} in a {limit} km/h zone. Fine in $?",
        "table": "{Vehicle} fines: {items}.",
        "one": " It {act}. Fine in $?",
        "two": " It {act1} and {act2}. Total $?",
        "deadline": "Appeal within {days} days of the judgment of {date}. Last day?",
        "served": "Judgment {date}, served {served} days later; appeal within {days} days of service. Last day?",
        "article": "Articles: {items}. {case} Which applies?",
        "art": "{n} {title}",
    },
    "vi": {
        "speed_table": "Phạt {vehicle} theo km/h vượt: 1-10 ${f1}, 11-20 ${f2}, từ 21 ${f3}.",
        "over": " Xe chạy quá {over} km/h. Phạt bao nhiêu $?",
        "speed_limit": " Xe chạy {speed} km/h, giới hạn {limit}. Phạt bao nhiêu $?",
        "table": "Phạt {vehicle}: {items}.",
        "one": " Xe {act}. Phạt bao nhiêu $?",
        "two": " Xe {act1} và {act2}. Tổng $?",
        "deadline": "Kháng cáo trong {days} ngày kể từ ngày tuyên án {date}. Hạn cuối?",
        "served": "Tuyên án {date}, tống đạt sau {served} ngày; kháng cáo trong {days} ngày từ tống đạt. Hạn cuối?",
        "article": "Các điều: {items}. {case} Điều nào?",
        "art": "{n} {title}",
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
    """The legal default instruction built from the tags (at difficulty 0: a fine or an article, as written).

    >>> default_system_prompt()[:69]
    'Apply the rules given. Reply as <think>work</think><answer>X</answer>'
    >>> default_system_prompt(difficulty=0)
    'Read the rules given. Reply as <think>work</think><answer>X</answer>; X is only the fine or the article number, as written.'
    """
    reply = f"{reasoning_start}work{reasoning_end}{solution_start}X{solution_end}"
    if difficulty == 0:
        if language == "vi":
            return f"Đọc quy định đã cho. Trả lời dạng {reply}; X chỉ ghi mức phạt hoặc số điều, đúng như đã ghi."
        return f"Read the rules given. Reply as {reply}; X is only the fine or the article number, as written."
    if language == "vi":
        return (
            f"Áp dụng quy định đã cho. Trả lời dạng {reply}; X là số tiền phạt, ngày dạng YYYY-MM-DD "
            "(tính theo ngày lịch, không tính ngày đầu) hoặc số điều."
        )
    return (
        f"Apply the rules given. Reply as {reply}; X is a fine as a number, a date as YYYY-MM-DD "
        "(calendar days, start day not counted) or an article number."
    )


def speed_bracket(over: int) -> int:
    """Index into ``SPEED_BRACKETS`` of ``over`` km/h above the limit (>= 1).

    >>> [speed_bracket(x) for x in (1, 10, 11, 20, 21, 50)]
    [0, 0, 1, 1, 2, 2]
    """
    for i, (lo, hi) in enumerate(SPEED_BRACKETS):
        if lo <= over and (hi is None or over <= hi):
            return i
    raise ValueError(f"km/h over the limit must be >= 1, got {over}")


def _fine(rng: random.Random, difficulty: int, lang: str) -> tuple[str, dict, str, str]:
    """A fine question: ``(question, params, answer, reasoning)``."""
    text = _TEXT[lang]
    vehicle = rng.choice(tuple(FINES))
    names = {"Vehicle": VEHICLES[vehicle][lang], "vehicle": VEHICLES[vehicle][lang].lower()}
    table = FINES[vehicle]
    if difficulty == 1 or (difficulty == 2 and rng.random() < 0.5):
        f1, f2, f3 = SPEED_FINES[vehicle]
        head = text["speed_table"].format(f1=f1, f2=f2, f3=f3, **names)
        over = rng.randint(1, 40)
        params: dict = {"vehicle": vehicle, "fine_1_10": f1, "fine_11_20": f2, "fine_21_up": f3}
        if difficulty == 1:
            params["over"] = over
            tail = text["over"].format(over=over, **names)
        else:
            limit = rng.choice((40, 50, 60, 80, 90, 100))
            params.update(speed=limit + over, limit=limit)
            tail = text["speed_limit"].format(speed=limit + over, limit=limit, **names)
        fine = SPEED_FINES[vehicle][speed_bracket(over)]
        work = f"{over} over" if difficulty == 1 else f"{limit + over}-{limit}={over}"
        return head + tail, params, str(fine), f"{work}->{fine}"
    listed = rng.sample(tuple(table), 2 if difficulty == 2 else 3)
    items = ", ".join(f"{OFFENCES[k][lang][0]} ${table[k]}" for k in listed)
    head = text["table"].format(items=items, **names)
    params = {"vehicle": vehicle, **{f"fine_{k}": table[k] for k in listed}}
    if difficulty == 2:
        done = rng.choice(listed)
        params["offences"] = done
        tail = text["one"].format(act=OFFENCES[done][lang][1], **names)
        return head + tail, params, str(table[done]), f"{done}->{table[done]}"
    a, b = rng.sample(listed, 2)
    params["offences"] = f"{a},{b}"
    tail = text["two"].format(act1=OFFENCES[a][lang][1], act2=OFFENCES[b][lang][1], **names)
    total = table[a] + table[b]
    return head + tail, params, str(total), f"{table[a]}+{table[b]}={total}"


def _deadline(rng: random.Random, difficulty: int, lang: str) -> tuple[str, dict, str, str]:
    """A deadline question: ``(question, params, answer, reasoning)``."""
    start = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(6 * 365))
    days = rng.randint(3, 10) if difficulty == 1 else rng.choice((15, 20, 30, 45, 60, 90))
    params: dict = {"date": start.isoformat(), "days": days}
    if difficulty < 3:
        question = _TEXT[lang]["deadline"].format(**params)
        end = start + dt.timedelta(days=days)
        return question, params, end.isoformat(), f"{start}+{days}d={end}"
    params["served"] = served = rng.randint(2, 20)
    question = _TEXT[lang]["served"].format(**params)
    end = start + dt.timedelta(days=served + days)
    return question, params, end.isoformat(), f"{start}+{served}d+{days}d={end}"


def _article(rng: random.Random, difficulty: int, lang: str) -> tuple[str, dict, str, str]:
    """A which-article question: ``(question, params, answer, reasoning)``."""
    numbers = sorted(rng.sample(tuple(ARTICLES), difficulty + 1))
    answer = rng.choice(numbers)
    items = ", ".join(_TEXT[lang]["art"].format(n=n, title=ARTICLES[n][1][lang]) for n in numbers)
    case = ARTICLES[answer][2][lang]
    question = _TEXT[lang]["article"].format(items=items, case=case)
    params = {"articles": ",".join(map(str, numbers)), "topic": ARTICLES[answer][0]}
    return question, params, str(answer), f"{ARTICLES[answer][0]}->Art. {answer}"


def _fine_table(rng: random.Random, language: str) -> Draw:
    """A difficulty-0 draw: ``(task, question, params, answer, reasoning)``; ``params`` holds the excerpt as
    ``[article, offence, fine]`` in the order shown, the question ``kind`` and what it ``asked``.

    Kinds: ``forward`` (offence -> fine), ``article`` (offence -> article) and ``reverse`` (fine ->
    article), half and half of ``table_kind``'s reverse share, and ``pick`` (-> article).
    """
    text = _TABLE_TEXT[language]
    k = rng.randint(3, 5)
    numbers, offences = sorted(rng.sample(ARTICLE_NUMBERS, k)), rng.sample(tuple(TABLE_OFFENCES), k)
    table: list[list[Any]] = [list(entry) for entry in zip(numbers, offences, rng.sample(TABLE_FINES, k))]
    kind = table_kind(rng)
    if kind == "reverse" and rng.random() < 0.5:
        kind = "article"
    entries = [text["entry"].format(n=n, offence=TABLE_OFFENCES[o][language], fine=f) for n, o, f in table]
    if kind == "pick":
        asked = rng.choice(("highest", "lowest"))
        i = (max if asked == "highest" else min)(range(k), key=lambda j: table[j][2])
        answer, ask = str(table[i][0]), text[asked]
        reasoning = f"{'max' if asked == 'highest' else 'min'}: {entries[i]}"
    else:
        i = rng.randrange(k)
        n, offence, fine = table[i]
        asked = fine if kind == "reverse" else offence
        answer = str(fine) if kind == "forward" else str(n)
        reasoning = entries[i]
        ask = text[kind].format(asked=fine if kind == "reverse" else TABLE_OFFENCES[offence][language])
    question = text["table"].format(items="; ".join(entries)) + ask
    return TABLE_TASK, question, {"table": table, "kind": kind, "asked": asked}, answer, reasoning


_DRAW = {"fine": _fine, "deadline": _deadline, "article": _article}


class LegalEnv(GeneratedTaskEnv):
    """Toy traffic-law questions; rows carry ``question``, ``answer``, ``reasoning``, ``params`` and more."""

    domain = "legal"
    DIFFICULTIES, LANGUAGES, HOLDOUT = DIFFICULTIES, LANGUAGES, HOLDOUT

    prompt_template = staticmethod(default_system_prompt)

    def draw(self, rng: random.Random) -> Draw:
        """Draw ``(task, question, params, answer, reasoning)`` from ``rng``."""
        if self.difficulty == 0:
            return _fine_table(rng, self.language)
        task = rng.choice(TASKS)
        question, params, answer, reasoning = _DRAW[task](rng, self.difficulty, self.language)
        return task, question, params, answer, reasoning
