"""Runs the evaluators named in `config.evals` (name -> its settings); each writes eval/<name>/...
."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import jax
import numpy as np

from jimte.evaluate import attention_png, encode, retrieval

log = logging.getLogger("jimte.evaluate")


def _retrieval(cfg, *, config, encoded, data, workdir) -> dict[str, float]:
  results = retrieval.evaluate(
    encoded,
    ks=tuple(cfg.ks),
    scores=tuple(cfg.scores),
    gamma1=config.loss.gamma1,
    gamma2=config.loss.gamma2,
    gamma3=config.loss.gamma3,
  )
  lines = [f"retrieval on {int(results['num_pairs'])} held-out pairs (chance R@K = K/N):"]
  for score in cfg.scores:
    for direction in ("i2t", "t2i"):
      row = "  ".join(f"R@{k} {100 * results[f'{score}/{direction}_R@{k}']:5.1f}%" for k in cfg.ks)
      lines.append(f"  {score:8s} {direction}: {row}")
  lines.append(
    "  chance      : " + "  ".join(f"R@{k} {100 * results[f'chance_R@{k}']:5.1f}%" for k in cfg.ks)
  )
  if jax.process_index() == 0:
    print("\n".join(lines), flush=True)
  return results


def _attention_png(cfg, *, config, encoded, data, workdir) -> dict[str, float]:
  if jax.process_index() != 0:  # one writer of the shared work dir
    return {}
  path = os.path.join(workdir, "attention.png")
  attention_png.save_attention_png(
    path,
    encoded,
    data.tokenizer,
    gamma1=config.loss.gamma1,
    num_pairs=cfg.num_pairs,
    words_per_pair=cfg.words_per_pair,
    boxes=data.ground_truth_boxes(config.evals.retrieval.split),
  )
  print(f"word->region attention figure: {path}", flush=True)
  return {}


EVALUATORS: dict[str, Callable] = {"retrieval": _retrieval, "attention_png": _attention_png}


def run_all(config, model, state, data, mesh, workdir, writer) -> dict[str, float]:
  """Encodes each needed split once and runs every configured evaluator on it."""
  unknown = set(config.evals.keys()) - set(EVALUATORS)
  if unknown:
    raise ValueError(
      f"config.evals: unknown evaluator(s) {sorted(unknown)}; known: {sorted(EVALUATORS)}"
    )
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  keep = max((cfg.get("num_pairs", 0) for cfg in config.evals.values()), default=0)
  encoded_by_split: dict[str, dict[str, np.ndarray]] = {}
  results: dict[str, float] = {}
  for name, cfg in config.evals.items():
    split = cfg.get("split", config.data.eval_split)
    if split not in encoded_by_split:
      encoded_by_split[split] = encode.encode_split(
        model, variables, data.eval_batches(mesh, split), keep_images=keep
      )
    out = EVALUATORS[name](
      cfg, config=config, encoded=encoded_by_split[split], data=data, workdir=workdir
    )
    results.update({f"eval/{name}/{k}": v for k, v in out.items()})
  writer.write_scalars(int(state.step), results)
  writer.flush()
  return results
