"""Registry of the built-in domain tasks: medical, legal and financial calculations.

>>> sorted(DOMAIN_ENVS)
['financial', 'legal', 'medical']
>>> make_domain_env("legal", seed=1, language="vi").language
'vi'
"""

from __future__ import annotations

from typing import Any

from envs.base import Env
from envs.financial import FinancialEnv
from envs.legal import LegalEnv
from envs.medical import MedicalEnv

DOMAIN_ENVS: dict[str, type[Env]] = {"medical": MedicalEnv, "legal": LegalEnv, "financial": FinancialEnv}


def make_domain_env(domain: str, **kwargs: Any) -> Env:
    """Build the env of ``domain`` with ``kwargs`` (seed, difficulty, language, tags, system_prompt).

    >>> make_domain_env("tax")
    Traceback (most recent call last):
    ...
    ValueError: unknown domain 'tax'; known domains: financial, legal, medical
    """
    if domain not in DOMAIN_ENVS:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(sorted(DOMAIN_ENVS))}")
    return DOMAIN_ENVS[domain](**kwargs)
