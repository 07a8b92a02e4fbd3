"""Evaluators, each chosen by name from `config.evals` (a small registry, not an if-chain)."""
