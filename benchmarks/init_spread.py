"""How much the towers' outputs vary with content at initialisation (the plateau's cause).

For one held-out batch of the config's data: the mean and std of the pairwise cosine between the
examples' image vectors, sentence vectors (the config's pooling and the other one), word vectors
and region vectors. A mean near 1 with std near 0 means the vector hardly depends on its input,
so a contrastive term on it starts with no signal (docs/ablations.md).

    python benchmarks/init_spread.py                                   # configs/default.py
    python benchmarks/init_spread.py --config.model.text.sentence_pooling=first
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "the config to measure")


def pairwise_cosine(x: np.ndarray) -> tuple[float, float]:
  """Mean and std of the cosine between distinct rows of `x`."""
  x = np.asarray(x, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  s = x @ x.T
  off = s[~np.eye(len(x), dtype=bool)]
  return float(off.mean()), float(off.std())


def main(argv) -> None:
  del argv
  import jax

  from jimte import sharding
  from jimte.data import DataBundle
  from jimte.evaluate import encode
  from jimte.models.joimternet import build_model, init_variables

  config = _CONFIG.value
  split = "test"
  with tempfile.TemporaryDirectory() as workdir:
    data = DataBundle.create(config, workdir, eval_splits=[split])
    model_config = config.model.copy_and_resolve_references()
    model_config.text.vocab_size = data.tokenizer.vocab_size
    model = build_model(model_config)
    variables = init_variables(model, jax.random.key(config.seed), config.image_size, 16)
    mesh = sharding.make_mesh(config.mesh)
    batch = next(iter(data.eval_batches(mesh, split)))
    out = encode.make_encode_fn(model)(variables, batch["image"], batch["tokens"])
  out = jax.tree.map(np.asarray, out)
  mask = out["word_mask"]
  rows = {
    "image vector": out["image_global"],
    f"sentence vector ({model_config.text.sentence_pooling})": out["sentence"],
  }
  if encode.OTHER_POOLING_KEY in out:
    rows[f"sentence vector ({encode.other_pooling(model)})"] = out[encode.OTHER_POOLING_KEY]
  rows["word vectors (200)"] = out["words"][mask][:200]
  regions = out["regions"].reshape(-1, out["regions"].shape[-1])
  rows["region vectors (300)"] = regions[:: max(1, len(regions) // 300)][:300]
  print(f"pairwise cosine at initialisation, {len(out['image_global'])} held-out examples:")
  for name, x in rows.items():
    mean, std = pairwise_cosine(x)
    print(f"  {name:32s} mean {mean:.4f}  std {std:.4f}")


if __name__ == "__main__":
  app.run(main)
