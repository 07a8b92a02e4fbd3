"""`jimte alc-retrieve`: anatomy-conditioned retrieval (ALC-ITR) from an export made with
`--anatomy`: cases ranked by how well their region texts (a report export) or region embeddings
(an image export) match the query image's chosen regions, with the matched report sentences, a
heatmap per case and, on request, an explanation prompt for an LLM (docs/alc_itr.md).

  jimte alc-retrieve --workdir W --index EXPORT --image q.png \\
      --regions "left upper lung zone" "left lung" --mode or [--text nodule] [--blend 0.2] \\
      [--heatmaps DIR] [--prompt prompt.txt]

Query regions are names of the 29 Chest ImaGenome regions, embedded on the default atlas's boxes,
or one `--box y0,x0,y1,x1` (normalised on the query image), compared with the gallery's region of
largest overlap with it. Per region r: s_r = cos(query region r, case's region r), averaged with
cos(query text, case's region-r text) when a `--text` is given; the case's score is the mean of
s_r over the regions (AND) or their maximum (OR), blended with the global score (image -> report or
image -> image) as (1 - blend) * conditioned + blend * global. Plain retrieval of the same export
stays `jimte retrieve`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS
from jimte import export
from jimte.anatomy import regions as regions_lib


@dataclasses.dataclass(frozen=True)
class ConditionedHit:
  rank: int
  id: str
  score: float
  global_score: float
  region_scores: dict[str, float]
  region_sentences: dict[str, list[str]]
  findings: dict[str, list[str]]
  report: str | None


def box_region(box: np.ndarray) -> int:
  """The atlas region overlapping `box` most (IoU): where a drawn box is looked up in a case."""
  atlas = regions_lib.default_atlas()
  lo, hi = np.maximum(atlas[:, :2], box[:2]), np.minimum(atlas[:, 2:], box[2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  return int(np.argmax(inter / (area(atlas) + area(box) - inter + 1e-12)))


def parse_box(text: str) -> np.ndarray:
  """'y0,x0,y1,x1' (normalised) -> float32 [4], or a ValueError naming the flag."""
  try:
    box = np.array([float(v) for v in text.split(",")], np.float32)
  except ValueError:
    box = np.zeros(0)
  if box.shape != (4,) or not np.all((box >= 0) & (box <= 1)) or np.any(box[2:] <= box[:2]):
    raise ValueError(f"--box {text!r}: expected y0,x0,y1,x1 in [0, 1] with y1 > y0 and x1 > x0")
  return box


def conditioned_scores(
  query_regions: np.ndarray,
  gallery: np.ndarray,
  region_ids: list[int],
  *,
  query_text: np.ndarray | None = None,
  gallery_text: np.ndarray | None = None,
) -> np.ndarray:
  """Per-region scores [N, K] of the gallery ([N, 29, D]) against the query's K region vectors."""
  per_region = np.einsum("nkd,kd->nk", gallery[:, region_ids], query_regions)
  if query_text is not None:
    text_scores = np.einsum("nkd,d->nk", gallery_text[:, region_ids], query_text)
    per_region = 0.5 * (per_region + text_scores)
  return per_region


def combine(per_region: np.ndarray, global_scores: np.ndarray, mode: str, blend: float):
  """The cases' scores: AND the mean, OR the max over regions, blended with the global score."""
  if mode not in ("and", "or"):
    raise ValueError(f"--mode must be 'and' or 'or', got {mode!r}")
  conditioned = per_region.mean(1) if mode == "and" else per_region.max(1)
  return (1.0 - blend) * conditioned + blend * global_scores


def retrieve(
  model,
  index: export.Export,
  image,
  *,
  region_names: list[str] | None = None,
  box: np.ndarray | None = None,
  mode: str = "or",
  text: str | None = None,
  blend: float = 0.0,
  k: int = 10,
) -> tuple[list[ConditionedHit], list[str]]:
  """The top-`k` cases of an anatomy export for `image` conditioned on regions (or a box);
  returns the hits and the regions they were scored on."""
  if not 0.0 <= blend <= 1.0:
    raise ValueError(f"--blend must be in [0, 1], got {blend}")
  if (region_names is None) == (box is None):
    raise ValueError("give --regions or --box (one of them)")
  kind = index.manifest["kind"]
  column = "region_text" if kind == "text" else "anatomy"
  if column not in index.extra:
    raise ValueError(f"the export has no {column!r} column: export it with --anatomy")
  if box is not None:
    region_ids, boxes = [box_region(box)], box[None]
  else:
    region_ids = regions_lib.region_indices(region_names)
    boxes = regions_lib.default_atlas()[region_ids]
  query_regions, query_global = model.encode_anatomy(image, boxes)
  query_text = gallery_text = None
  if text:
    if kind != "text":
      raise ValueError("--text conditions a report export (made with --anatomy from reports)")
    query_text, gallery_text = model.encode_region_texts([text])[0], index.extra[column]
  gallery = np.asarray(index.extra[column], np.float32)
  per_region = conditioned_scores(
    query_regions, gallery, region_ids, query_text=query_text, gallery_text=gallery_text
  )
  global_scores = index.embeddings @ query_global
  scores = combine(per_region, global_scores, mode, blend)
  order = np.argsort(-scores, kind="stable")[:k]
  names = [CHEST_IMAGENOME_REGIONS[r] for r in region_ids]
  sentences = index.extra.get("region_sentences")
  codes = index.extra.get("region_codes")
  hits = []
  for rank, row in enumerate(order, start=1):
    case_sentences = json.loads(sentences[row]) if sentences is not None else None
    hits.append(
      ConditionedHit(
        rank=rank,
        id=index.ids[row],
        score=float(scores[row]),
        global_score=float(global_scores[row]),
        region_scores={n: float(per_region[row, j]) for j, n in enumerate(names)},
        region_sentences={
          n: (case_sentences[r] if case_sentences is not None else [])
          for n, r in zip(names, region_ids, strict=True)
        },
        findings={
          n: (regions_lib.finding_names(int(codes[row, r])) if codes is not None else [])
          for n, r in zip(names, region_ids, strict=True)
        },
        report=index.reports[row] if index.reports is not None else None,
      )
    )
  return hits, names


def write_prompt(path: str, template: str, names, mode, box, text, image, hits) -> str:
  """The explanation prompt of a conditioned retrieval (jimte.explain)."""
  from jimte import explain

  query = explain.Query(
    regions=tuple(names),
    mode=mode,
    box=None if box is None else tuple(float(v) for v in box),
    text=text or None,
    image=str(image),
  )
  cases = [
    explain.RetrievedCase(
      case_id=h.id,
      rank=h.rank,
      score=h.score,
      region_scores=h.region_scores,
      region_sentences=h.region_sentences,
      findings=sorted({f for found in h.findings.values() for f in found}),
    )
    for h in hits
  ]
  return explain.write_prompt(path, query, cases, template)


def main(argv: list[str] | None = None) -> int:
  """`jimte alc-retrieve`: anatomy-conditioned top-K cases of an export for a query image."""
  p = argparse.ArgumentParser(prog="jimte alc-retrieve", description=main.__doc__)
  p.add_argument("--workdir", required=True, help="the trained work dir (encodes the query)")
  p.add_argument("--index", required=True, help="an export made with --anatomy")
  p.add_argument("--image", required=True, help="query X-ray file")
  where = p.add_mutually_exclusive_group(required=True)
  where.add_argument("--regions", nargs="+", help="Chest ImaGenome region names")
  where.add_argument("--box", help="y0,x0,y1,x1 normalised on the query image")
  p.add_argument("--mode", choices=("and", "or"), default="or")
  p.add_argument("--text", default="", help="optional text of the suspected finding")
  p.add_argument("--blend", type=float, default=0.0, help="weight of the global score, in [0, 1]")
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--json", action="store_true", help="print the hits as JSON")
  p.add_argument("--heatmaps", help="write a heatmap per case (query image vs its sentences)")
  p.add_argument("--prompt", help="write an explanation prompt for an LLM to this file")
  p.add_argument(
    "--prompt-template", default=None, help="prompt template config (configs/prompts/...)"
  )
  args = p.parse_args(argv)
  try:
    from jimte.inference import JimteModel
    from jimte.retrieve import identity_of, model_identity
    from jimte.search import check_compatible

    index = export.read_export(args.index, columns=_anatomy_columns(args.index))
    model = JimteModel.from_workdir(args.workdir)
    check_compatible(identity_of(index.manifest), model_identity(model), index_name=args.index)
    box = parse_box(args.box) if args.box else None
    hits, names = retrieve(
      model,
      index,
      args.image,
      region_names=args.regions,
      box=box,
      mode=args.mode,
      text=args.text,
      blend=args.blend,
      k=args.k,
    )
    if args.prompt:
      from jimte.explain import DEFAULT_TEMPLATE

      template = args.prompt_template or DEFAULT_TEMPLATE
      write_prompt(args.prompt, template, names, args.mode, box, args.text, args.image, hits)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"jimte alc-retrieve: {e}", file=sys.stderr)
    return 2
  if args.heatmaps:
    from jimte.evaluate.heatmaps import write_heatmaps

    texts = [
      " ".join(s for ss in h.region_sentences.values() for s in ss) or h.report or "" for h in hits
    ]
    write_heatmaps(model, [args.image] * len(hits), texts, args.heatmaps)
  if args.json:
    print(json.dumps(dict(regions=names, hits=[dataclasses.asdict(h) for h in hits]), indent=2))
  else:
    print("conditioned on " + f" {args.mode.upper()} ".join(names))
    for h in hits:
      per = ", ".join(f"{n}: {v:+.3f}" for n, v in h.region_scores.items())
      found = "; ".join(f"{n}: {', '.join(f) or 'normal'}" for n, f in h.findings.items())
      print(f"{h.rank:3d}  {h.score:+.4f}  {h.id}  [{per}]  ({found})")
      for name, sentences in h.region_sentences.items():
        for s in sentences:
          print(f"       {name}: {s}")
  return 0


ANATOMY_COLUMNS = ("region_text", "region_codes", "region_sentences", "anatomy")


def _anatomy_columns(path: str) -> list[str]:
  """The anatomy columns an export holds (from its first part's schema)."""
  import os

  import pyarrow.parquet as pq

  manifest_path = os.path.join(path, export.MANIFEST)
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"{path} is not a finished export (no {export.MANIFEST})")
  with open(manifest_path) as f:
    parts = json.load(f)["parts"]
  names = pq.read_schema(os.path.join(path, parts[0])).names if parts else []
  return [c for c in ANATOMY_COLUMNS if c in names]


if __name__ == "__main__":
  sys.exit(main())
