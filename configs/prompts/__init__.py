"""Prompt sets for zero-shot classification (configs as code: `get_config()` -> ConfigDict)."""
