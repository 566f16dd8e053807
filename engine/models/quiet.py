"""Silence the model libraries' chatter (shared by every loader; imports nothing of the engine)."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence per-load progress bars and deprecation chatter of transformers/PEFT (called at run time)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\..*")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
    # lorapop passes past_key_values on purpose (shared prompts); the rename to `cache` is transformers' business
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*", category=FutureWarning)
