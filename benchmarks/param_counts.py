"""Parameter counts of the paper config's towers beside the original release's, per tower.

Ours: `configs/joimternet_paper.py`'s model at the original's vocabulary (8,411 ids: the 8,410
entries of its `word2idx` plus [MASK]), counted from shapes (nothing is computed). The original's:
its `JoImTeR/model_img.py` and `model_txt.py`, read from a git directory of the release (`git
show` into a temporary folder, never into this repository), instantiated as
`trainer_pretrain.py` builds them and counted with `p.numel()`. That needs torch and
transformers: in this interpreter, or in the one given by `--torch-python` (a separate venv, so
that torch never enters the project's).

    python benchmarks/param_counts.py                                   # ours (+ original if torch)
    python benchmarks/param_counts.py --torch-python /tmp/torchenv/bin/python
    python benchmarks/param_counts.py --original-repo PATH/JoImTeR_MLMI_2021/.git

Measured 2026-12-02 (torch 2.13.0+cpu, transformers 5.24.0): image 12,378,906 both, text
19,131,098 both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ORIGINAL_VOCAB_SIZE = 8411
DEFAULT_ORIGINAL_REPO = "/work/.mirror/mshaikh2+JoImTeR_MLMI_2021/repo"
ORIGINAL_SOURCES = ("JoImTeR/model_img.py", "JoImTeR/model_txt.py")


def ours(vocab_size: int) -> dict[str, dict[str, int]]:
  """Per tower: total and per top-level module, of the paper config's model."""
  import functools

  import jax

  from configs import joimternet_paper
  from jimte.models import build_model, count_params, init_variables

  model_config = joimternet_paper.get_config().model.copy_and_resolve_references()
  model_config.text.vocab_size = vocab_size
  model = build_model(model_config)
  variables = jax.eval_shape(
    functools.partial(init_variables, model, image_size=256, text_length=model_config.text.max_len),
    jax.random.PRNGKey(0),
  )
  counts = {}
  for tower, params in variables["params"].items():
    parts = {name: count_params(sub) for name, sub in params.items()}
    counts[tower] = {"total": count_params(params), **parts}
  return counts


def export_original_sources(
  repo: str, folder: Path, sources: Mapping[str, str] | None = None
) -> None:
  """Writes the release's files from the git directory `repo` into `folder`: `sources` maps each
  path in the release to its path under `folder` (default: the model files, by their names)."""
  if sources is None:
    sources = {path: Path(path).name for path in ORIGINAL_SOURCES}
  for path, target in sources.items():
    result = subprocess.run(
      ["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, text=True, check=False
    )
    if result.returncode:
      raise SystemExit(f"cannot read {path} from {repo}: {result.stderr.strip()}")
    (folder / target).parent.mkdir(parents=True, exist_ok=True)
    (folder / target).write_text(result.stdout)


def original_bert_config(vocab_size: int, **dropouts):
  """The release's BERT config, as JoImTeR/trainer_pretrain.py builds it (needs transformers);
  `dropouts`: its `hidden_dropout_prob` / `attention_probs_dropout_prob` from its config."""
  from transformers import BertConfig

  return BertConfig(
    vocab_size=vocab_size,
    hidden_size=512,
    num_hidden_layers=3,
    num_attention_heads=8,
    intermediate_size=2048,
    hidden_act="gelu",
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    initializer_range=0.02,
    type_vocab_size=2,
    pad_token_id=0,
    **dropouts,
  )


def original(repo: str, vocab_size: int) -> dict[str, dict[str, int]]:
  """Per tower: total and per child module, of the release's encoders (needs torch)."""
  with tempfile.TemporaryDirectory() as folder:
    export_original_sources(repo, Path(folder))
    sys.path.insert(0, folder)
    import model_img
    import model_txt

    sys.path.remove(folder)
  bert_config = original_bert_config(vocab_size)
  towers = {
    "image": model_img.ImageEncoder(output_channels=512),
    "text": model_txt.TextEncoder(bert_config=bert_config, output_channels=512, pool="cls"),
  }

  def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())

  return {
    tower: {"total": numel(module), **{n: numel(m) for n, m in module.named_children()}}
    for tower, module in towers.items()
  }


def original_counts(args) -> dict | str:
  """The original's counts, or a sentence saying why there are none."""
  if args.torch_python:
    command = [
      args.torch_python,
      __file__,
      "--original-only",
      "--original-repo",
      args.original_repo,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      return f"{args.torch_python} failed: {result.stderr.strip().splitlines()[-1:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as error:
    return f"not counted: {error} (pass --torch-python PYTHON of a venv with torch)"
  return original(args.original_repo, args.vocab_size)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab-size", type=int, default=ORIGINAL_VOCAB_SIZE)
  parser.add_argument("--original-repo", default=DEFAULT_ORIGINAL_REPO)
  parser.add_argument("--torch-python", default="", help="a Python with torch + transformers")
  parser.add_argument("--original-only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.original_only:  # child mode: the original's counts as one JSON line
    print(json.dumps(original(args.original_repo, args.vocab_size)))
    return
  mine, theirs = ours(args.vocab_size), original_counts(args)
  print(f"parameters at vocabulary {args.vocab_size:,}")
  print(f"{'tower':8} {'jimte (paper config)':>22} {'original release':>18}  equal")
  for tower in ("image", "text"):
    reference = theirs[tower]["total"] if isinstance(theirs, dict) else None
    shown = f"{reference:,}" if reference is not None else "-"
    equal = "" if reference is None else ("yes" if reference == mine[tower]["total"] else "NO")
    print(f"{tower:8} {mine[tower]['total']:>22,} {shown:>18}  {equal}")
  if isinstance(theirs, str):
    print(f"original: {theirs}")
  for tower in ("image", "text"):
    print(f"\n{tower}, ours:     " + ", ".join(f"{k} {v:,}" for k, v in mine[tower].items()))
    if isinstance(theirs, dict):
      print(f"{tower}, original: " + ", ".join(f"{k} {v:,}" for k, v in theirs[tower].items()))


if __name__ == "__main__":
  main()
