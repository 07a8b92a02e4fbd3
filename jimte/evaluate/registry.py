"""The evaluators of `config.evals`, each chosen by its `type` from a registry and built once.

`config.evals` maps a name to `dict(type=..., split=..., every_steps=..., <the type's settings>)`:
`type` picks the class (`EVALUATORS`), so one type can run twice, e.g. on two splits; `split` is
the split it reads; `every_steps` > 0 also runs it every so many steps during training (such a step
also saves a checkpoint carrying the results, which `keep_best_checkpoints` ranks by
`best_metric`), 0 only once training is complete. Every evaluator runs at the end. Results are
written as `eval/<name>/<metric>`. A bad entry fails when the evaluators are built, before any data
is read, naming its key.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from data_pipeline.input import study_filter
from jimte import multihost
from jimte.evaluate import anatomy_retrieval, attention_png, encode, grounding, retrieval
from jimte.models.text import other_head_pooling

log = logging.getLogger("jimte.evaluate")

UNTRAINED_METRICS = "untrained_metrics.json"  # in the work dir: results before the first update


def tf_gfile():
  """tf.io.gfile: the work dir may be on GCS."""
  import tensorflow as tf

  return tf.io.gfile


COMMON_KEYS = ("type", "split", "every_steps")  # the keys every entry of config.evals has


class Evaluator(abc.ABC):
  """One entry of `config.evals`: what it reads (`split`), when it runs (`every_steps`), and the
  settings of its type (`SETTINGS`, the defaults of those an entry leaves out)."""

  TYPE: ClassVar[str]
  SETTINGS: ClassVar[Mapping[str, Any]]
  keep_images: int = 0  # input images of the split to keep in the encoding (for pictures)
  needs_anatomy: bool = False  # the split's anatomy joined to its batches (region boxes, texts)

  def __init__(self, name: str, entry: Mapping[str, Any], config: ml_collections.ConfigDict):
    self.name = name
    self.key = f"config.evals.{name}"
    unknown = sorted(set(entry.keys()) - set(COMMON_KEYS) - set(self.SETTINGS))
    if unknown:
      raise ValueError(
        f"{self.key}.{unknown[0]}: not a setting of a {self.TYPE!r} evaluator "
        f"(its keys: {', '.join([*COMMON_KEYS, *self.SETTINGS])})"
      )
    if not entry.get("split"):
      raise ValueError(f"{self.key}.split: missing (the split this evaluator reads)")
    self.split = str(entry["split"])
    self.every_steps = entry.get("every_steps", 0)
    if not isinstance(self.every_steps, int) or self.every_steps < 0:
      raise ValueError(
        f"{self.key}.every_steps: {self.every_steps!r} is not a step count >= 0 "
        "(0: only once training is complete)"
      )
    self.settings = {k: entry.get(k, default) for k, default in self.SETTINGS.items()}

  def due(self, step: int) -> bool:
    """Whether it runs during training after `step` updates."""
    return self.every_steps > 0 and step % self.every_steps == 0

  wants_untrained_baseline: bool = False  # also run on the state before the first update
  untrained: dict[str, float] | None = None  # those results, for printing beside the trained ones

  def check(self, data) -> None:  # noqa: B027 (a hook: most evaluators need nothing checked)
    """Fails before training when the data cannot give what it needs (naming its key)."""

  def input_split(self, data) -> str:
    """The name in `data.sources` of what it encodes: its split, or a restriction of it that it
    registered there. Every process calls it at the same point (it may broadcast)."""
    return self.split

  @abc.abstractmethod
  def __call__(self, encoded: Mapping[str, np.ndarray], *, data, workdir: str) -> dict[str, float]:
    """The results on the encoded split (`encode.encode_split`), as {metric: value}."""


class RetrievalEvaluator(Evaluator):
  """Recall@K in both directions for each score kind (`jimte.evaluate.retrieval`), with chance, on
  the whole split and averaged over pools of `pool_size` candidates.

  Settings: `pool_size`, `num_pools`, `pool_sampling` ("blocks": consecutive blocks in split
  order, the original's; "random": seeded draws, `pool_seed`); `identical_texts_match`: a report
  identical to the true one counts as a hit (read once from the split); `one_image_per_study`:
  score one frontal image per study (`data_pipeline.input.study_filter`), reporting how many
  images were dropped. `same_findings`: also report recall where a hit is any case with the same
  set of positive labels as the query (exact on the synthetic set): True needs a split with labels
  (an error otherwise), "auto" reports it where the split has labels and logs that it does not.
  """

  TYPE = "retrieval"
  SETTINGS = {
    "ks": (1, 5, 10),
    "scores": retrieval.SCORES,
    "pool_size": 1000,
    "num_pools": 3,
    "pool_sampling": "blocks",
    "pool_seed": 0,
    "identical_texts_match": True,
    "one_image_per_study": False,
    "same_findings": False,
  }

  def __init__(self, name, entry, config):
    super().__init__(name, entry, config)
    unknown = sorted(set(self.settings["scores"]) - set(retrieval.SCORES))
    if unknown:
      raise ValueError(
        f"{self.key}.scores: unknown score(s) {unknown}; known: {', '.join(retrieval.SCORES)}"
      )
    for key in ("pool_size", "num_pools", "pool_seed"):
      value = self.settings[key]
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{self.key}.{key}: {value!r} is not an integer >= 0")
    if self.settings["pool_sampling"] not in retrieval.POOL_SAMPLINGS:
      raise ValueError(
        f"{self.key}.pool_sampling: {self.settings['pool_sampling']!r} is not one of "
        f"{', '.join(retrieval.POOL_SAMPLINGS)}"
      )
    for key in ("identical_texts_match", "one_image_per_study", "same_findings"):
      value = self.settings[key]
      if not isinstance(value, bool) and not (key == "same_findings" and value == "auto"):
        allowed = "True, False or 'auto'" if key == "same_findings" else "True or False"
        raise ValueError(f"{self.key}.{key}: {value!r} is not {allowed}")
    self.ks = tuple(int(k) for k in self.settings["ks"])
    self.scores = tuple(self.settings["scores"])
    pooling = config.get("model", {}).get("text", {}).get("sentence_pooling", "first")
    if "global_other_pooling" in self.scores and other_head_pooling(pooling) is None:
      raise ValueError(
        f"{self.key}.scores: 'global_other_pooling' needs a text tower pooling 'first' or 'mean' "
        f"(config.model.text.sentence_pooling is {pooling!r}, which has no other)"
      )
    self.gammas = {g: float(config.loss[g]) for g in ("gamma1", "gamma2", "gamma3")}
    self._metadata: study_filter.StudyMetadata | None = None
    self._input_split: str | None = None
    self._filter_results: dict[str, float] = {}
    self._said_no_labels = False

  def metadata(self, data) -> study_filter.StudyMetadata:
    """Ids, reports and views of the whole split, read once per run."""
    if self._metadata is None:
      self._metadata = study_filter.read_study_metadata(data.sources[self.split])
    return self._metadata

  def input_split(self, data) -> str:
    if not self.settings["one_image_per_study"]:
      return self.split
    if self._input_split is None:
      selection = study_filter.one_frontal_per_study(self.metadata(data))
      # The kept set decides how many evaluation batches every process runs: process 0's.
      kept = multihost.from_process_0([int(i) for i in selection.indices])
      name = f"{self.split}[one_image_per_study]"
      if name not in data.sources:
        base = data.sources[self.split]
        data.sources[name] = study_filter.SubsetSource(
          base, kept, name=f"{base.name}{name[len(self.split) :]}"
        )
      self._input_split = name
      self._filter_results = {
        "one_image_per_study/num_images": float(selection.num_examples),
        "one_image_per_study/dropped_same_study": float(selection.dropped_same_study),
        "one_image_per_study/dropped_not_frontal": float(selection.dropped_not_frontal),
        "one_image_per_study/studies_without_frontal": float(selection.studies_without_frontal),
      }
    return self._input_split

  def __call__(self, encoded, *, data, workdir) -> dict[str, float]:
    texts = finding_sets = None
    if self.settings["identical_texts_match"] or self.settings["same_findings"]:
      meta = self.metadata(data)
      if not np.isin(encoded["index"], meta.index).all():
        raise ValueError(f"{self.key}: encoded examples missing from split {self.split!r}")
      rows = np.searchsorted(meta.index, encoded["index"])
      if self.settings["identical_texts_match"]:
        texts = meta.text[rows]
      if self.settings["same_findings"] and meta.labels is None:
        if self.settings["same_findings"] != "auto":
          raise ValueError(
            f"{self.key}.same_findings: split {self.split!r} has no labels to compare findings"
          )
        if not self._said_no_labels:
          logging.info("%s: split %r has no labels: no same-findings recall", self.key, self.split)
          self._said_no_labels = True
      elif self.settings["same_findings"]:
        finding_sets = retrieval.finding_set_groups(meta.labels[rows])
    s = self.settings
    results = retrieval.evaluate(
      encoded,
      ks=self.ks,
      scores=self.scores,
      texts=texts,
      finding_sets=finding_sets,
      pool_size=s["pool_size"],
      num_pools=s["num_pools"],
      pool_sampling=s["pool_sampling"],
      pool_seed=s["pool_seed"],
      **self.gammas,
    )
    results.update(self._filter_results)
    if jax.process_index() == 0:
      print(self._summary(results), flush=True)
    return results

  def _summary(self, results: Mapping[str, float]) -> str:
    """The printed table: whole pool, then the pool average, then chance."""
    num_pairs = int(results["num_pairs"])
    pool = f"pool{self.settings['pool_size']}"
    num_pools = int(results.get(f"{pool}/num_pools", 0))
    ties = (
      f"; identical reports match ({int(results['pairs_sharing_their_text'])} pairs share theirs)"
      if "pairs_sharing_their_text" in results
      else ""
    )
    lines = [f"{self.name}: retrieval on {num_pairs} held-out pairs of {self.split!r}{ties}:"]
    if self._filter_results:
      f = {k.split("/")[1]: int(v) for k, v in self._filter_results.items()}
      lines.append(
        f"  one frontal image per study: {f['num_images']} images, dropped "
        f"{f['dropped_same_study']} of studies already scored, {f['dropped_not_frontal']} not "
        f"frontal ({f['studies_without_frontal']} studies without a frontal image)"
      )
    blocks = [("", f"all {num_pairs}", "chance_R@")]
    if "same_findings/num_sets" in results:
      sets = int(results["same_findings/num_sets"])
      blocks.append(
        (
          "same_findings/",
          f"all {num_pairs}, a hit = the same findings ({sets} sets)",
          "same_findings/chance_R@",
        )
      )
    if num_pools:
      how = "blocks" if self.settings["pool_sampling"] == "blocks" else "random draws"
      blocks.append(
        (f"{pool}/", f"{num_pools} x {self.settings['pool_size']} ({how})", f"{pool}/chance_R@")
      )
    for prefix, label, chance in blocks:
      lines.append(f"  pool: {label}")
      for score in self.scores:
        for direction in ("i2t", "t2i"):
          row = "  ".join(
            f"R@{k} {100 * results[f'{score}/{prefix}{direction}_R@{k}']:5.1f}%" for k in self.ks
          )
          lines.append(f"    {score:20s} {direction}: {row}")
      lines.append(
        f"    {'chance':20s}    : "
        + "  ".join(f"R@{k} {100 * results[f'{chance}{k}']:5.1f}%" for k in self.ks)
      )
    return "\n".join(lines)


class AttentionPngEvaluator(Evaluator):
  """A PNG of word->region attention on a few pairs of its split (`jimte.evaluate.attention_png`),
  written to `<workdir>/<filename>` by process 0; no metrics."""

  TYPE = "attention_png"
  SETTINGS = {"num_pairs": 4, "words_per_pair": 4, "filename": "attention.png"}

  def __init__(self, name, entry, config):
    super().__init__(name, entry, config)
    self.keep_images = int(self.settings["num_pairs"])
    self.gamma1 = float(config.loss.gamma1)

  def __call__(self, encoded, *, data, workdir) -> dict[str, float]:
    if jax.process_index() != 0:  # one writer of the shared work dir
      return {}
    path = os.path.join(workdir, self.settings["filename"])
    phrases = None
    findings = data.ground_truth.get(self.split)
    if findings is not None:  # show the findings' own words over their boxes
      texts = study_filter.read_study_metadata(data.sources[self.split]).text
      found, _ = grounding.finding_phrases(encoded, data.tokenizer, texts, findings)
      phrases = {}
      for phrase in found:
        index = int(encoded["index"][phrase.row])
        phrases.setdefault(index, []).append((phrase.term, list(phrase.slots)))
    attention_png.save_attention_png(
      path,
      encoded,
      data.tokenizer,
      gamma1=self.gamma1,
      num_pairs=self.keep_images,
      words_per_pair=int(self.settings["words_per_pair"]),
      boxes=data.ground_truth_boxes(self.split),
      phrases=phrases,
    )
    print(f"word->region attention figure: {path}", flush=True)
    return {}


class GroundingEvaluator(Evaluator):
  """Phrase grounding of the findings a report names against their ground-truth boxes
  (`jimte.evaluate.grounding`): pointing game, CNR and mIoU of the word->region attention and of
  the region-phrase similarity maps, per finding kind too, with chance.

  Settings: `maps` (kinds of `grounding.MAP_KINDS`), `thresholds` (mIoU), `untrained_baseline`
  (also run on the state before the first update and print those figures beside the trained
  ones), `skip_without_boxes` (a split without ground truth gives no results and a log line
  rather than an error).
  """

  TYPE = "grounding"
  SETTINGS = {
    "maps": grounding.MAP_KINDS,
    "thresholds": grounding.DEFAULT_THRESHOLDS,
    "untrained_baseline": True,
    "skip_without_boxes": False,
  }

  def __init__(self, name, entry, config):
    super().__init__(name, entry, config)
    unknown = sorted(set(self.settings["maps"]) - set(grounding.MAP_KINDS))
    if unknown or not self.settings["maps"]:
      raise ValueError(
        f"{self.key}.maps: {list(self.settings['maps'])!r} must name some of "
        f"{', '.join(grounding.MAP_KINDS)}"
      )
    thresholds = self.settings["thresholds"]
    if not thresholds or not all(
      isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds
    ):
      raise ValueError(f"{self.key}.thresholds: {thresholds!r} must be numbers in [0, 1]")
    for key in ("untrained_baseline", "skip_without_boxes"):
      if not isinstance(self.settings[key], bool):
        raise ValueError(f"{self.key}.{key}: {self.settings[key]!r} is not True or False")
    self.wants_untrained_baseline = self.settings["untrained_baseline"]
    self.gamma1 = float(config.loss.gamma1)
    self.image_size = int(config.image_size)
    self.untrained: dict[str, float] | None = None
    self._texts = None

  def check(self, data) -> None:
    if data.ground_truth.get(self.split) is None and not self.settings["skip_without_boxes"]:
      raise ValueError(
        f"{self.key}: split {self.split!r} has no ground-truth boxes (the synthetic source has "
        "them); set skip_without_boxes=True or remove the entry"
      )

  def __call__(self, encoded, *, data, workdir) -> dict[str, float]:
    findings = data.ground_truth.get(self.split)
    if findings is None:
      self.check(data)
      log.info("%s: split %r has no ground-truth boxes: no grounding", self.key, self.split)
      return {}
    if self._texts is None:
      self._texts = list(study_filter.read_study_metadata(data.sources[self.split]).text)
    results = grounding.evaluate(
      encoded,
      data.tokenizer,
      self._texts,
      findings,
      image_size=self.image_size,
      gamma1=self.gamma1,
      kinds=tuple(self.settings["maps"]),
      thresholds=tuple(float(t) for t in self.settings["thresholds"]),
    )
    if jax.process_index() == 0 and results.get("num_phrases"):
      print(self._summary(results), flush=True)
    return results

  def _summary(self, results: Mapping[str, float]) -> str:
    """The printed table: per map kind, trained (and untrained, where run) beside chance."""
    skipped = int(sum(v for k, v in results.items() if k.startswith("skipped/")))
    lines = [
      f"{self.name}: grounding of {int(results['num_phrases'])} finding phrases of {self.split!r} "
      f"in their boxes ({skipped} skipped); pointing game chance "
      f"{results['chance_pointing_game']:.3f} (mean box area), ceiling of the region grid "
      f"{results['oracle/pointing_game']:.3f}"
    ]
    before = self.untrained if self.untrained and self.untrained is not results else None
    header = f"    {'':22s} {'pointing':>9s} {'CNR':>6s} {'mIoU':>6s}"
    for kind in self.settings["maps"]:
      lines.append(f"  {kind} maps:" + ("  (untrained in brackets)" if before else ""))
      lines.append(header)
      names = ["all", *sorted(k.split("/")[-1] for k in results if k.startswith("num_phrases/"))]
      for name in names:
        key = f"{kind}/pointing_game" + ("" if name == "all" else f"/{name}")
        row = f"{results[key]:9.3f}"
        if before and key in before:
          row += f" ({before[key]:.3f})"
        if name == "all":
          for metric in ("cnr", "miou"):
            row += f" {results[f'{kind}/{metric}']:6.3f}"
            if before:
              row += f" ({before[f'{kind}/{metric}']:.3f})"
        label = name if name == "all" else f"{name} ({int(results[f'num_phrases/{name}'])})"
        lines.append(f"    {label:22s} {row}")
    return "\n".join(lines)


class AnatomyRetrievalEvaluator(Evaluator):
  """ALC-ITR's location-conditioned retrieval (`jimte.evaluate.anatomy_retrieval`): P@k, R@k and
  mAP where a hit is the same finding in the same region, conditioned on the query's region and
  not (plain global retrieval), on the same pool.

  Settings: `k`, `blend` (weight of the global score in the blended one), `query_regions` (all |
  leaves), `untrained_baseline`.
  """

  TYPE = "anatomy_retrieval"
  SETTINGS = {"k": 10, "blend": 0.5, "query_regions": "all", "untrained_baseline": False}
  needs_anatomy = True

  def __init__(self, name, entry, config):
    super().__init__(name, entry, config)
    k, blend = self.settings["k"], self.settings["blend"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      raise ValueError(f"{self.key}.k: {k!r} is not a positive integer")
    if not isinstance(blend, (int, float)) or isinstance(blend, bool) or not 0 <= blend <= 1:
      raise ValueError(f"{self.key}.blend: {blend!r} is not a number in [0, 1]")
    if self.settings["query_regions"] not in anatomy_retrieval.QUERY_REGION_SETS:
      raise ValueError(
        f"{self.key}.query_regions: {self.settings['query_regions']!r} is not one of "
        f"{', '.join(anatomy_retrieval.QUERY_REGION_SETS)}"
      )
    if not isinstance(self.settings["untrained_baseline"], bool):
      raise ValueError(f"{self.key}.untrained_baseline: not True or False")
    self.wants_untrained_baseline = self.settings["untrained_baseline"]

  def __call__(self, encoded, *, data, workdir) -> dict[str, float]:
    results = anatomy_retrieval.evaluate(
      encoded,
      k=self.settings["k"],
      blend=float(self.settings["blend"]),
      regions=self.settings["query_regions"],
    )
    if jax.process_index() == 0 and results.get("num_queries"):
      print(self._summary(results), flush=True)
    return results

  def _summary(self, results: Mapping[str, float]) -> str:
    k = self.settings["k"]
    before = self.untrained if self.untrained and self.untrained is not results else None
    lines = [
      f"{self.name}: location-conditioned retrieval on {self.split!r}, "
      f"{int(results['num_queries'])} (image, region) queries "
      f"({int(results['skipped/no_relevant'])} without another such case skipped); a hit is "
      f"the same finding in the same region; chance precision {results['chance_precision']:.3f}"
      + ("  (untrained in brackets)" if before else ""),
      f"    {'':14s} {f'P@{k}':>15s} {f'R@{k}':>15s} {'mAP':>15s}",
    ]
    for kind in anatomy_retrieval.SCORE_KINDS:
      cells = []
      for metric in (f"precision@{k}", f"recall@{k}", "mean_average_precision"):
        key = f"{kind}/{metric}"
        cell = f"{results[key]:.3f}" + (f" ({before[key]:.3f})" if before and key in before else "")
        cells.append(f"{cell:>15s}")
      lines.append(f"    {kind:14s} " + " ".join(cells))
    return "\n".join(lines)


EVALUATORS: dict[str, type[Evaluator]] = {
  cls.TYPE: cls
  for cls in (
    RetrievalEvaluator,
    AttentionPngEvaluator,
    GroundingEvaluator,
    AnatomyRetrievalEvaluator,
  )
}


def build_evaluators(config: ml_collections.ConfigDict) -> list[Evaluator]:
  """The evaluators of `config.evals`, in its order; a bad entry is an error naming its key."""
  evaluators = []
  for name, entry in config.evals.items():
    kind = entry.get("type")
    if kind not in EVALUATORS:
      raise ValueError(
        f"config.evals.{name}.type: unknown evaluator type {kind!r}; known: "
        f"{', '.join(sorted(EVALUATORS))}"
      )
    evaluators.append(EVALUATORS[kind](name, entry, config))
  return evaluators


class EvalRunner:
  """Runs evaluators on a train state and writes their results (eval/<name>/<metric>).

  Built once before the training loop: the encoder is jitted once, and a split read by several
  evaluators run at one step is encoded once.
  """

  def __init__(self, evaluators: Iterable[Evaluator], *, model, data, mesh, workdir, writer):
    self.evaluators = list(evaluators)
    self._encode = encode.make_encode_fn(model)
    self._data, self._mesh, self._workdir, self._writer = data, mesh, workdir, writer

  def due(self, step: int) -> list[Evaluator]:
    """The evaluators whose cadence falls on `step`."""
    return [e for e in self.evaluators if e.due(step)]

  def check(self) -> None:
    """Each evaluator's check of the data, before any training step."""
    for evaluator in self.evaluators:
      evaluator.check(self._data)

  def run_untrained(self, state) -> dict[str, float]:
    """The evaluators that want it, on the state before the first update: their results are kept
    for printing beside the trained ones and written to `<workdir>/untrained_metrics.json` (read
    back on resume by `load_untrained`). Every process runs it (same decision everywhere)."""
    wanted = [e for e in self.evaluators if e.wants_untrained_baseline]
    if not wanted:
      return {}
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    results = {}
    for evaluator in wanted:
      encoded = self._encode_split(variables, evaluator.input_split(self._data), evaluator)
      evaluator.untrained = evaluator(encoded, data=self._data, workdir=self._workdir)
      results.update({f"eval/{evaluator.name}/{k}": v for k, v in evaluator.untrained.items()})
    if jax.process_index() == 0:
      with tf_gfile().GFile(os.path.join(self._workdir, UNTRAINED_METRICS), "w") as f:
        json.dump({k: float(v) for k, v in results.items()}, f, indent=2)
    return results

  def load_untrained(self) -> None:
    """On resume: the untrained results a run wrote at its start, where it did."""
    path = os.path.join(self._workdir, UNTRAINED_METRICS)
    if not tf_gfile().exists(path):
      return
    with tf_gfile().GFile(path) as f:
      saved = json.load(f)
    for evaluator in self.evaluators:
      prefix = f"eval/{evaluator.name}/"
      mine = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
      if evaluator.wants_untrained_baseline and mine:
        evaluator.untrained = mine

  def _encode_split(self, variables, split: str, evaluator) -> dict[str, np.ndarray]:
    return encode.encode_split(
      self._encode,
      variables,
      self._data.eval_batches(self._mesh, split, anatomy=evaluator.needs_anatomy),
      keep_images=evaluator.keep_images,
    )

  def run(
    self, state, step: int, evaluators: Iterable[Evaluator] | None = None
  ) -> dict[str, float]:
    """Runs `evaluators` (all by default) on `state`; returns and writes their results."""
    evaluators = self.evaluators if evaluators is None else list(evaluators)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    encoded: dict[str, dict[str, np.ndarray]] = {}
    results: dict[str, float] = {}
    inputs = {id(e): e.input_split(self._data) for e in evaluators}
    for evaluator in evaluators:
      split = inputs[id(evaluator)]
      if split not in encoded:
        readers = [e for e in evaluators if inputs[id(e)] == split]
        encoded[split] = encode.encode_split(
          self._encode,
          variables,
          self._data.eval_batches(self._mesh, split, anatomy=any(e.needs_anatomy for e in readers)),
          keep_images=max(e.keep_images for e in readers),
        )
      out = evaluator(encoded[split], data=self._data, workdir=self._workdir)
      results.update({f"eval/{evaluator.name}/{k}": v for k, v in out.items()})
    if results:
      self._writer.write_scalars(step, results)
      self._writer.flush()
    return results
