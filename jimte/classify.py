"""Command line: multi-label classification of a trained work dir's image embeddings.

  python -m jimte.classify --workdir DIR [--dataset synthetic|covid_cxr|iu_xray|...]
      [--mode probe|finetune|zero_shot] [--fractions 1.0,0.1,0.01] [--tfds_data_dir DATA]

Modes (docs/classification.md): `probe` — logistic regression per label on the frozen global
embeddings, weight decay chosen on the validation split; `finetune` — the image tower with the
original's head, trained end to end (jimte/finetune.py); `zero_shot` — positive against negative
report-style prompts (configs/prompts/zero_shot.py). Each prints and writes a Markdown and a JSON
table of per-class test AUROC and the mean without "No Finding", one column per train fraction.

Labels: the synthetic set's exact ones (from the phantoms' ground-truth findings); for a TFDS
dataset, the rule-based report labeler (data_pipeline.labels) run on each example's report text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from data_pipeline.names import CHEXPERT_INDEX, CHEXPERT_OBSERVATIONS
from jimte.evaluate import classification as cls_lib
from jimte.evaluate import zero_shot as zs_lib

log = logging.getLogger("jimte.classify")

MODES = ("probe", "finetune", "zero_shot")
SPLITS = ("train", "validation", "test")


# ------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class LabeledSplit:
  """A split's examples (a `data_pipeline.input.Source`) and their CheXpert-style labels [N, 14]."""

  name: str
  source: object
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.labels)


def synthetic_exact_labels(findings: Sequence[Sequence[dict]]) -> np.ndarray:
  """Labels [N, 14] from the phantoms' ground truth: 1 where a drawn finding maps to the class, 0
  where it does not, for the classes the generator draws and "No Finding" (no finding other than a
  support device); nan for the classes it never draws (they are not scored)."""
  from data_pipeline.phantoms.config import FINDING_TO_CHEXPERT

  drawn = sorted({CHEXPERT_INDEX[name] for name in FINDING_TO_CHEXPERT.values()})
  labels = np.full((len(findings), len(CHEXPERT_OBSERVATIONS)), np.nan, np.float32)
  labels[:, drawn] = 0.0
  for i, example in enumerate(findings):
    for finding in example:
      labels[i, CHEXPERT_INDEX[finding["chexpert"]]] = 1.0
    pathology = [f for f in example if f["name"] != "support_device"]
    labels[i, CHEXPERT_INDEX[cls_lib.NO_FINDING]] = 0.0 if pathology else 1.0
  return labels


def synthetic_split(config, split: str, num: int) -> LabeledSplit:
  """The work dir's phantom split (same seed and size as its training data) with exact labels."""
  from data_pipeline import phantoms
  from data_pipeline.input import ArraySource
  from jimte import data as data_lib

  dc = config.data
  generated = phantoms.generate_split(
    num, split=split, seed=dc.seed, config=data_lib.phantom_config(dc)
  )
  labels = synthetic_exact_labels(generated["findings"])
  source = ArraySource(
    f"synthetic/{split}",
    images=generated["image"],
    texts=generated["text"],
    study_ids=generated["study_id"],
    patient_ids=generated["patient_id"],
    labels=labels,
  )
  return LabeledSplit(split, source, labels)


def tfds_split(dataset_dir: str, split: str, labeler) -> LabeledSplit:
  """A built TFDS split, labelled by running `labeler` (ReportLabeler) on each report."""
  from data_pipeline.input import TfdsSource

  source = TfdsSource(dataset_dir, split)
  texts = [
    t.decode("utf-8") for t in source.as_dataset(0, 1).map(lambda e: e["text"]).as_numpy_iterator()
  ]
  return LabeledSplit(split, source, labeler.label_many(texts))


def subset_source(split: LabeledSplit, indices: np.ndarray):
  """The rows `indices` of a split as a streamed source whose examples carry `labels`."""
  import tensorflow as tf

  from data_pipeline.input import DatasetSource

  keep = np.zeros(split.num_examples, bool)
  keep[indices] = True
  keep_t = tf.constant(keep)
  labels_t = tf.constant(split.labels)
  contract = ("image", "text", "study_id", "patient_id")

  def with_labels(example):
    row = {k: example[k] for k in contract if k in example}
    row["labels"] = tf.gather(labels_t, example["index"])
    return row

  dataset = split.source.as_dataset(0, 1).filter(lambda e: tf.gather(keep_t, e["index"]))
  return DatasetSource(dataset.map(with_labels), num_examples=int(keep.sum()))


def eval_images(split: LabeledSplit, tokenizer, image_size: int, batch_size: int = 64):
  """Model-input images of a split in index order, in batches: yields float32 [b, S, S, 1]."""
  from data_pipeline.input import make_eval_batches

  batches = make_eval_batches(
    split.source, tokenizer=tokenizer, image_size=image_size, batch_size=batch_size
  )
  expected = 0
  for batch in batches:
    valid = batch["valid"].astype(bool)
    index = batch["index"][valid]
    if len(index) and not np.array_equal(index, np.arange(expected, expected + len(index))):
      raise RuntimeError(f"{split.name}: evaluation batches out of order at example {expected}")
    expected += len(index)
    if len(index):
      yield batch["image"][valid]


# -------------------------------------------------------------------------------------- the modes
def _fractions_table(fractions, results) -> dict:
  return {f"{f:g}": r for f, r in zip(fractions, results, strict=True)}


def run_probe(model, splits, fractions, *, seed, min_positives, class_balanced) -> dict:
  """Linear probe on frozen global embeddings, one fit per train fraction."""
  emb = {
    name: np.concatenate(
      [
        model.encode_image_arrays(b).embeddings
        for b in eval_images(s, model.tokenizer, model.image_size)
      ]
    )
    for name, s in splits.items()
  }
  t = {n: cls_lib.targets_from_labels(s.labels) for n, s in splits.items()}
  results = []
  for fraction in fractions:
    subset = cls_lib.low_data_subset(
      t["train"][0], fraction, seed=seed, min_positives=min_positives, mask=t["train"][1]
    )
    idx = subset.indices
    probe = cls_lib.fit_linear_probe(
      emb["train"][idx],
      t["train"][0][idx],
      t["train"][1][idx],
      emb["validation"],
      *t["validation"],
      class_balanced=class_balanced,
    )
    table = cls_lib.per_class_auroc(t["test"][0], probe.logits(emb["test"]), t["test"][1])
    results.append(
      {
        "subset": subset.as_dict(),
        "table": table.as_dict(),
        "l2": dict(zip(CHEXPERT_OBSERVATIONS, map(float, probe.l2), strict=True)),
      }
    )
  return _fractions_table(fractions, results)


def run_zero_shot(model, splits, prompts_path: str) -> dict:
  """Zero-shot scores of the test split from the prompt file; no training, one column."""
  prompts = zs_lib.load_prompts(prompts_path)
  test = splits["test"]
  emb = np.concatenate(
    [
      model.encode_image_arrays(b).embeddings
      for b in eval_images(test, model.tokenizer, model.image_size)
    ]
  )
  s_pos, s_neg = zs_lib.prompt_similarities(
    emb, prompts, lambda texts: model.encode_reports(list(texts)).embeddings
  )
  scores = zs_lib.zero_shot_scores(s_pos, s_neg, gamma=float(model.config.loss.gamma3))
  targets, mask = cls_lib.targets_from_labels(test.labels)
  columns = [CHEXPERT_INDEX[label] for label in prompts.labels]
  table = cls_lib.per_class_auroc(targets[:, columns], scores, mask[:, columns], prompts.labels)
  return {"zero_shot": {"prompts": prompts.source, "table": table.as_dict()}}


def pretrained_image_tower(model, workdir: str):
  """The image tower module and its trained variables ({params, batch_stats}) of a work dir."""
  from jimte import checkpointing
  from jimte.models.joimternet import build_model

  model_config = model.config.model.copy_and_resolve_references()
  model_config.text.vocab_size = model.tokenizer.vocab_size
  state, _ = checkpointing.load_state_numpy(os.path.join(workdir, "checkpoints"), model.step)
  tower = build_model(model_config).image
  variables = {"params": state["params"]["image"]}
  if state.get("batch_stats") and "image" in state["batch_stats"]:
    variables["batch_stats"] = state["batch_stats"]["image"]
  return tower, variables


def run_finetune(model, workdir, splits, fractions, *, seed, min_positives, ft_config) -> dict:
  """Fine-tunes the image tower with the original's head, once per train fraction."""
  from data_pipeline.input import make_train_iterator
  from jimte import finetune

  tower, tower_vars = pretrained_image_tower(model, workdir)
  size = model.image_size
  cached = {n: list(eval_images(splits[n], model.tokenizer, size)) for n in ("validation", "test")}
  t = {n: cls_lib.targets_from_labels(s.labels) for n, s in splits.items()}
  no_finding = CHEXPERT_INDEX[cls_lib.NO_FINDING]
  results = []
  for fraction in fractions:
    subset = cls_lib.low_data_subset(
      t["train"][0], fraction, seed=seed, min_positives=min_positives, mask=t["train"][1]
    )
    idx = subset.indices
    batch_size = min(ft_config.batch_size, len(idx))
    steps_per_epoch = max(1, len(idx) // batch_size)
    pos_weight, class_weight = finetune.loss_weights(
      t["train"][0][idx], t["train"][1][idx], ft_config.pos_weight_cap, no_finding
    )
    clf, variables = finetune.init_classifier(
      tower, tower_vars, len(CHEXPERT_OBSERVATIONS), size, ft_config
    )
    trainer = finetune.Finetuner(
      clf,
      variables,
      ft_config,
      steps_per_epoch=steps_per_epoch,
      pos_weight=pos_weight,
      class_weight=class_weight,
    )
    batches: Iterator = make_train_iterator(
      subset_source(splits["train"], idx),
      tokenizer=model.tokenizer,
      image_size=size,
      batch_size=batch_size,
      seed=seed,
      augment=True,
      extra_keys=("labels",),
    )

    def validate(tr):
      probs = tr.predict(cached["validation"])
      targets, mask = t["validation"]
      return cls_lib.per_class_auroc(targets, probs, mask).mean_without_no_finding

    fit = trainer.fit(batches, validate)
    probs = trainer.predict(cached["test"], fit.variables)
    table = cls_lib.per_class_auroc(t["test"][0], probs, t["test"][1])
    results.append(
      {
        "subset": subset.as_dict(),
        "table": table.as_dict(),
        "best_epoch": fit.best_epoch,
        "validation_mean_auroc_per_epoch": [
          None if math.isnan(v) else v for v in fit.epoch_validation
        ],
        "train_loss_first_last": [fit.train_losses[0], fit.train_losses[-1]],
      }
    )
  return _fractions_table(fractions, results)


# ------------------------------------------------------------------------------------- reporting
def markdown_table(results: dict, title: str) -> str:
  """Per-class test AUROC, one column per fraction (or zero-shot), mean without No Finding."""
  columns = list(results)
  tables = [results[c]["table"] for c in columns]
  names = list(tables[0]["per_class"])
  header = "| class | test positives | " + " | ".join(
    f"{float(c) * 100:g}% train" if c != "zero_shot" else "zero-shot" for c in columns
  )
  lines = [f"### {title}", "", header + " |", "|---|---:|" + "---:|" * len(columns)]

  def cell(value):
    return "–" if value is None else f"{value:.3f}"

  for name in names:
    row = tables[0]["per_class"][name]
    values = [cell(t["per_class"][name]["auroc"]) for t in tables]
    lines.append(f"| {name} | {row['positives']} | " + " | ".join(values) + " |")
  means = [cell(t["mean_auroc_without_no_finding"]) for t in tables]
  lines.append("| **mean without No Finding** | | " + " | ".join(f"**{m}**" for m in means) + " |")
  sizes = [str(results[c]["subset"]["size"]) if "subset" in results[c] else "0" for c in columns]
  lines.append("| train examples used | | " + " | ".join(sizes) + " |")
  return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="jimte classify", description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a trained work dir (checkpoints, tokenizer)")
  p.add_argument("--dataset", default="synthetic", help="synthetic, or a built TFDS dataset name")
  p.add_argument("--tfds_data_dir", default="", help="TFDS data dir (or a dataset directory)")
  p.add_argument("--tfds_config", default="", help="TFDS builder config (default: the builder's)")
  p.add_argument("--mode", default="probe", choices=MODES)
  p.add_argument("--fractions", default="1.0,0.1,0.01", help="train fractions, comma-separated")
  p.add_argument("--prompts", default=zs_lib.DEFAULT_PROMPTS, help="zero-shot prompt file")
  p.add_argument("--out", default="", help="output dir (default: <workdir>/classification)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--seed", type=int, default=0, help="seed of the low-data subsets")
  p.add_argument("--min_positives", type=int, default=2, help="per class, in every subset")
  p.add_argument("--class_balanced", action="store_true", help="probe: balance each label's loss")
  p.add_argument("--num_train", type=int, default=0, help="synthetic: train size (0: the run's)")
  p.add_argument("--num_eval", type=int, default=0, help="synthetic: val/test size (0: the run's)")
  p.add_argument("--epochs", type=int, default=0, help="finetune: epochs (0: the original's 20)")
  p.add_argument("--batch_size", type=int, default=0, help="finetune: batch (0: the original's 32)")
  args = p.parse_args(argv)
  try:
    args.fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
  except ValueError:
    p.error(f"--fractions: {args.fractions!r} is not a comma-separated list of numbers")
  if not args.fractions or not all(0.0 < f <= 1.0 for f in args.fractions):
    p.error(f"--fractions: each must be in (0, 1], got {args.fractions}")
  return args


def load_splits(args, config) -> tuple[dict[str, LabeledSplit], str]:
  """The train / validation / test splits of `--dataset` with labels, and where labels come from."""
  if args.dataset == "synthetic":
    num_train = args.num_train or config.data.num_train
    num_eval = args.num_eval or config.data.num_eval
    sizes = {"train": num_train, "validation": num_eval, "test": num_eval}
    train_split = config.data.train_split
    names = {"train": train_split, "validation": "validation", "test": "test"}
    splits = {k: synthetic_split(config, names[k], sizes[k]) for k in SPLITS}
    return splits, "exact (phantom ground truth)"
  import ml_collections

  from data_pipeline.labels import ReportLabeler
  from jimte.data import tfds_dataset_dir

  dc = ml_collections.ConfigDict(
    dict(tfds_name=args.dataset, tfds_config=args.tfds_config, tfds_data_dir=args.tfds_data_dir)
  )
  directory = tfds_dataset_dir(dc)
  labeler = ReportLabeler()
  return {k: tfds_split(directory, k, labeler) for k in SPLITS}, f"report labeler ({directory})"


def classify(args) -> dict:
  """Runs one mode; returns the results dict that is also written as JSON."""
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(args.workdir, step=args.step)
  splits, label_source = load_splits(args, model.config)
  if args.mode == "probe":
    results = run_probe(
      model,
      splits,
      args.fractions,
      seed=args.seed,
      min_positives=args.min_positives,
      class_balanced=args.class_balanced,
    )
  elif args.mode == "zero_shot":
    results = run_zero_shot(model, splits, args.prompts)
  else:
    from jimte import finetune

    ft_config = finetune.default_config()
    if args.epochs:
      ft_config.epochs = args.epochs
      ft_config.lr_drop_epoch = max(1, round(args.epochs / 2))  # the original: half-way
    if args.batch_size:
      ft_config.batch_size = args.batch_size
    results = run_finetune(
      model,
      args.workdir,
      splits,
      args.fractions,
      seed=args.seed,
      min_positives=args.min_positives,
      ft_config=ft_config,
    )
  return {
    "dataset": args.dataset,
    "mode": args.mode,
    "workdir": args.workdir,
    "step": int(model.step),
    "labels": label_source,
    "split_sizes": {k: s.num_examples for k, s in splits.items()},
    "results": results,
  }


def main(argv: Sequence[str] | None = None) -> int:
  """`jimte classify`: prints the Markdown table and writes it and the JSON under --out."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  args = parse_args(argv)
  report = classify(args)
  out = args.out or os.path.join(args.workdir, "classification")
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, f"{args.dataset}_{args.mode}")
  title = f"{args.dataset}, {args.mode} (labels: {report['labels']}; step {report['step']})"
  text = markdown_table(report["results"], title)
  with open(stem + ".json", "w") as f:
    json.dump(report, f, indent=2)
  with open(stem + ".md", "w") as f:
    f.write(text)
  print(text, flush=True)
  print(f"wrote {stem}.md and {stem}.json", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
