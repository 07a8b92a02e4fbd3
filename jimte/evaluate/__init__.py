"""Evaluators, declared in `config.evals` and chosen by their `type` (a small registry, not an
if-chain): `registry` (the evaluator classes and the runner), `encode` (a split through both
towers), `retrieval` (Recall@K), `attention_png` (the word->region attention figure)."""
