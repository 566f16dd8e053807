"""Where prompts come from: built-in offline tasks with verifiable answers, and user datasets.

Every env hands out rows (dicts) with a ``prompt`` (a string or a list of chat messages, as in TRL),
an ``answer`` and any extra columns, which are passed on to the reward functions.
"""
