"""Seconds per image-text step of the original PyTorch release, to time beside ours in one run.

    python benchmarks/bench_original_step.py --torch-python /tmp/torchenv/bin/python \
        --image_sizes 512,1024,2048 --batch_size 8
    python -m benchmarks.bench_train_step --config paper --image_sizes 512,1024,2048 \
        --batch_sizes 8 --lengths iu                                    # ours, the same hour

The release's own `JoImTeR/model_img.py`, `model_txt.py` and `misc/` (losses, config, attention),
read from a git directory of the release (`git show` into a temporary folder, never into this
repository), built and stepped as `JoImTeR/trainer_pretrain.py` does an image-text step: both
encoders in train mode, `sent_loss` + `words_loss` (weight LAMBDA_DAMSM) and the two triplet
losses (LAMBDA_TRIPLET), backward, gradient clipping at `clip_max_norm` per tower, one AdamW step
per tower. Fake inputs: images uniform in [-1, 1], reports of 160 tokens (the release pads every
batch to its longest, 160), random negatives as the trainer draws them. `class_ids=None`: with
one study per row the trainer's same-class mask masks nothing, and its `np.bool` no longer exists
in current numpy. Runs in the interpreter given by `--torch-python` (a venv with torch and
transformers, so that torch never enters the project's), on the CPU with as many threads as
`--threads`. Numbers, not pass/fail. That venv, once:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 transformers
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.param_counts import (
  DEFAULT_ORIGINAL_REPO,
  ORIGINAL_VOCAB_SIZE,
  export_original_sources,
  original_bert_config,
)

# The release's files the step needs, and where each goes in the temporary folder.
SOURCES = {
  "JoImTeR/model_img.py": "model_img.py",
  "JoImTeR/model_txt.py": "model_txt.py",
  "misc/config.py": "misc/config.py",
  "misc/losses.py": "misc/losses.py",
  "misc/GlobalAttention.py": "misc/GlobalAttention.py",
}


def time_original(repo: str, sizes: list[int], batch: int, length: int, repeats: int) -> dict:
  """Best seconds of the release's image-text step per input size (needs torch, transformers)."""
  import numpy as np
  import torch

  with tempfile.TemporaryDirectory() as folder:
    export_original_sources(repo, Path(folder), SOURCES)
    sys.path[:0] = [folder, str(Path(folder) / "misc")]  # `misc.*` and `GlobalAttention`
    import model_img
    import model_txt
    from misc import losses
    from misc.config import Config

  cfg = Config()
  losses.cfg.CUDA = False  # the release's config asks for CUDA; this is the CPU timing
  bert_config = original_bert_config(
    ORIGINAL_VOCAB_SIZE,
    hidden_dropout_prob=cfg.hidden_dropout_prob,
    attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
  )
  torch.manual_seed(0)
  image_encoder = model_img.ImageEncoder(output_channels=cfg.hidden_dim).train()
  text_encoder = model_txt.TextEncoder(
    bert_config=bert_config, output_channels=cfg.hidden_dim, pool="cls"
  ).train()
  optimizer_i = torch.optim.AdamW(
    image_encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
  )
  optimizer_t = torch.optim.AdamW(
    text_encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
  )
  rng = np.random.default_rng(0)

  def step(images, captions, masks, cap_lens):
    labels = torch.arange(batch)
    ids = np.arange(batch)
    neg_ids = torch.LongTensor([rng.choice(ids[ids != x]) for x in ids])
    image_encoder.zero_grad()
    text_encoder.zero_grad()
    regions, global_code = image_encoder(images)[:2]
    words, sentence = text_encoder(captions, masks, task="itm")
    s0, s1 = losses.sent_loss(global_code, sentence, labels, None, batch)
    w0, w1, _ = losses.words_loss(regions, words[:, :, 1:], labels, cap_lens - 1, None, batch)
    t0, t1 = losses.sent_triplet_loss(global_code, sentence, labels, neg_ids, batch)
    u0, u1, _ = losses.words_triplet_loss(
      regions, words[:, :, 1:], labels, neg_ids, cap_lens - 1, batch
    )
    loss = cfg.LAMBDA_DAMSM * (s0 + s1 + w0 + w1) + cfg.LAMBDA_TRIPLET * (t0 + t1 + u0 + u1)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(image_encoder.parameters(), cfg.clip_max_norm)
    optimizer_i.step()
    torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), cfg.clip_max_norm)
    optimizer_t.step()
    return float(loss)

  results = {}
  for size in sizes:
    images = torch.rand(batch, 1, size, size) * 2 - 1
    captions = torch.randint(1, ORIGINAL_VOCAB_SIZE, (batch, length))
    masks = torch.ones(batch, length, dtype=torch.long)
    cap_lens = torch.full((batch,), length, dtype=torch.long)
    step(images, captions, masks, cap_lens)  # warm-up
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      step(images, captions, masks, cap_lens)
      best = min(best, time.perf_counter() - start)
    results[str(size)] = best
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--original-repo", default=DEFAULT_ORIGINAL_REPO)
  parser.add_argument("--torch-python", default="", help="a Python with torch + transformers")
  parser.add_argument("--image_sizes", default="512,1024,2048")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--length", type=int, default=160, help="tokens per report (padded)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  sizes = [int(s) for s in args.image_sizes.split(",")]
  if args.child:  # in the torch interpreter: one JSON line of results
    import torch

    torch.set_num_threads(args.threads)
    times = time_original(args.original_repo, sizes, args.batch_size, args.length, args.repeats)
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "s_per_step": times}))
    return
  python = args.torch_python or sys.executable
  command = [python, __file__, "--child", *sys.argv[1:]]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(f"{python} failed:\n{result.stderr.strip()[-3000:]}")
  out = json.loads(result.stdout.strip().splitlines()[-1])
  print(
    f"original release, image-text step, batch {args.batch_size}, {args.length} tokens, "
    f"torch {out['torch']}, {out['threads']} threads"
  )
  for size, seconds in out["s_per_step"].items():
    print(f"  {size:>5} px  {seconds:8.3f} s/step  {args.batch_size / seconds:7.2f} pairs/s")


if __name__ == "__main__":
  from jimte import hugepages

  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
