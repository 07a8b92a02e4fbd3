"""Input-pipeline throughput: examples/s of data_pipeline.input at several output sizes.

The source is in-memory chest-X-ray-sized images (default 1024 x 1024, as a dataset resized when it
was built would hold; `--source_size 0`: stored at each output size, as a pod's records at training
resolution are) with report-like texts, as uint8 arrays or, with `--encoded`, as PNG bytes that the
pipeline decodes (as it decodes TFDS records). Each configuration runs the full per-example work:
decode, crop, resize, jitter, rotation, tokenization and (unless --no_mlm) MLM masking; the
evaluation pipeline (resize + tokenize only) is timed alongside for comparison. `--threads 1` runs
tf.data on one thread: pairs/s per host core. Prints numbers, asserts nothing.

    python -m benchmarks.bench_input --sizes 256 512 --batch_size 32 --steps 20
    python -m benchmarks.bench_input --sizes 512 1024 2048 --source_size 0 --encoded --threads 1 \
        --augment original_native --batch_size 8 --skip_eval     # per core, paper-size records
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from data_pipeline import input as inp
from data_pipeline.tokenizer import Tokenizer

IU_REPORTS = (
  Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray" / "reports_openi.csv"
)
SYNTHETIC_WORDS = [
  "the",
  "heart",
  "size",
  "is",
  "normal",
  "lungs",
  "are",
  "clear",
  "no",
  "pleural",
  "effusion",
  "or",
  "pneumothorax",
  "mild",
  "cardiomegaly",
  "left",
  "lower",
  "lobe",
  "opacity",
  "consistent",
  "with",
  "atelectasis",
  "right",
  "upper",
  "stable",
  "granuloma",
  "degenerative",
  "changes",
  "of",
  "the",
  "thoracic",
  "spine",
  "small",
  "nodule",
  "mediastinal",
  "contours",
  "within",
  "limits",
  "XXXX",
]


def load_reports(path: Path | None, count: int, seed: int) -> list[str]:
  """Real reports (findings + impression) when a CSV is given and present, else synthetic ones."""
  if path is not None and path.exists():
    with path.open(newline="", encoding="utf-8") as handle:
      texts = [f"{r['findings']} {r['impression']}".strip() for r in csv.DictReader(handle)]
    return [t for t in texts if t]
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(SYNTHETIC_WORDS, rng.integers(20, 80))) + "." for _ in range(count)]


def make_images(count: int, side: int, seed: int) -> np.ndarray:
  """Smooth random images with noise: uint8 [count, side, side, 1]."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (count, side // 64, side // 64, 1)).astype(np.float32)
  smooth = tf.image.resize(coarse, [side, side], method="bicubic").numpy()
  noise = rng.normal(0, 8, smooth.shape)
  return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def time_iterator(iterator, batch_size: int, warmup: int, steps: int) -> float:
  """Examples per second over `steps` batches, after `warmup` batches (autotune settling)."""
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="output image sizes")
  parser.add_argument("--source_size", type=int, default=1024, help="side of the stored images")
  parser.add_argument("--num_images", type=int, default=64, help="distinct images held in memory")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--max_len", type=int, default=160)
  parser.add_argument("--vocab_size", type=int, default=2000)
  parser.add_argument(
    "--reports", type=Path, default=IU_REPORTS, help="CSV with findings/impression"
  )
  parser.add_argument("--no_mlm", action="store_true")
  parser.add_argument("--encoded", action="store_true", help="store PNG bytes, decode per example")
  parser.add_argument("--threads", type=int, default=0, help="tf.data threads (0: all cores)")
  parser.add_argument("--augment", default="default", help="augmentation policy name")
  parser.add_argument("--skip_eval", action="store_true", help="time only the training pipeline")
  args = parser.parse_args()

  texts = load_reports(args.reports, 2000, seed=0)
  tokenizer = Tokenizer.train(texts, max_len=args.max_len, vocab_size=args.vocab_size)
  augment = True if args.augment == "default" else args.augment
  print(
    f"cpu cores {os.cpu_count()}, tf.data threads {args.threads or 'all'}, source "
    f"{args.num_images} x {args.source_size or 'output size'}^2 "
    f"{'PNG' if args.encoded else 'uint8'}, augment {args.augment}, "
    f"texts from {'IU reports' if args.reports and args.reports.exists() else 'synthetic'}, "
    f"vocab {tokenizer.vocab_size}, L={args.max_len}, host batch {args.batch_size}, "
    f"{args.steps} timed batches after {args.warmup}"
  )
  print(f"{'size':>6} {'pipeline':<34} {'examples/s':>11} {'ms/example':>11}")
  source = None
  for size in args.sizes:
    if source is None or not args.source_size:
      source = make_source(args, size, texts)
    pipelines = [("train: augment + tokenize" + ("" if args.no_mlm else " + MLM"), augment, True)]
    if not args.skip_eval:  # the evaluation pipeline's per-example work, on an endless stream
      pipelines.append(("eval-like: resize + tokenize", False, False))
    for label, augmentation, mlm in pipelines:
      dataset = inp.make_train_dataset(
        source,
        tokenizer=tokenizer,
        image_size=size,
        batch_size=args.batch_size,
        seed=0,
        augment=augmentation,
        mlm=mlm and not args.no_mlm,
      )
      if args.threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = args.threads
        dataset = dataset.with_options(options)
      rate = time_iterator(dataset.as_numpy_iterator(), args.batch_size, args.warmup, args.steps)
      print(f"{size:>6} {label:<34} {rate:>11.1f} {1000 / rate:>11.2f}", flush=True)


def make_source(args, size: int, texts: list[str]) -> inp.Source:
  """The benchmark's examples at `args.source_size` (0: `size`), as arrays or PNG bytes."""
  side = args.source_size or size
  images = make_images(args.num_images, side, seed=0)
  captions = [texts[i % len(texts)] for i in range(args.num_images)]
  if not args.encoded:
    return inp.ArraySource("bench", images=images, texts=captions)
  encoded = [tf.io.encode_png(image).numpy() for image in images]
  dataset = tf.data.Dataset.from_tensor_slices(
    {
      "image": encoded,
      "text": captions,
      "study_id": [f"s{i}" for i in range(args.num_images)],
    }
  )
  return inp.DatasetSource(dataset, name="bench_png")


if __name__ == "__main__":
  main()
