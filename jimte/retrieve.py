"""`jimte retrieve`: the top-K cases of an export for a query image file, a query text or an
exported id, with their scores and report text.

Directions follow from the query and the export's kind: an image query against an image export is
image→image, against a text export image→text; a text query against an image export is
text→image. Vectors of another model (other dims or config hash) are refused by name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from jimte import export, search


@dataclasses.dataclass(frozen=True)
class Hit:
  rank: int
  id: str
  score: float
  report: str | None


def identity_of(manifest: dict) -> search.IndexIdentity:
  return search.IndexIdentity(manifest["model_name"], manifest["config_hash"], int(manifest["dim"]))


def model_identity(model) -> search.IndexIdentity:
  return search.IndexIdentity(model.model_name, model.config_hash, int(model.embed_dim))


def direction(query_kind: str, index_kind: str) -> str:
  return f"{query_kind}→{index_kind}"


def top_k(index: export.Export, queries: np.ndarray, k: int, *, exclude: list[str] = ()):
  """Per query, the `k` best rows of `index` (rows whose id is in `exclude` left out)."""
  want = k
  scores, rows = search.search(queries, index.embeddings, min(k + len(exclude), len(index.ids)))
  results = []
  for q_scores, q_rows in zip(scores, rows, strict=True):
    hits = []
    for score, row in zip(q_scores, q_rows, strict=True):
      if index.ids[row] in exclude:
        continue
      report = index.reports[row] if index.reports is not None else None
      hits.append(Hit(len(hits) + 1, index.ids[row], float(score), report))
    results.append(hits[:want])
  return results


def query_by_id(index: export.Export, case_id: str) -> np.ndarray:
  try:
    row = index.ids.index(case_id)
  except ValueError:
    raise KeyError(f"id {case_id!r} is not in the export") from None
  return index.embeddings[row : row + 1]


def main(argv: list[str] | None = None) -> int:
  """`jimte retrieve`: top-K cases of an export for a query (image file, text, or exported id)."""
  p = argparse.ArgumentParser(prog="jimte retrieve", description=main.__doc__)
  p.add_argument("--index", required=True, help="an export directory (jimte export)")
  q = p.add_mutually_exclusive_group(required=True)
  q.add_argument("--image", help="query X-ray file")
  q.add_argument("--text", help="query report text")
  q.add_argument("--id", help="an id of the export: its vector is the query (itself left out)")
  p.add_argument("--workdir", help="the trained work dir (needed for --image/--text)")
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--json", action="store_true", help="print the hits as JSON")
  p.add_argument("--heatmaps", help="write a similarity heatmap per retrieved case here")
  args = p.parse_args(argv)
  try:
    index = export.read_export(args.index)
    kind = index.manifest["kind"]
    exclude: list[str] = []
    model = None
    if args.id is not None:
      queries, query_kind, exclude = query_by_id(index, args.id), kind, [args.id]
    else:
      if not args.workdir:
        raise ValueError("--image and --text queries need --workdir (the model that encodes them)")
      from jimte.inference import JimteModel

      model = JimteModel.from_workdir(args.workdir)
      search.check_compatible(
        identity_of(index.manifest), model_identity(model), index_name=args.index
      )
      if args.image is not None:
        queries, query_kind = model.encode_images([args.image]).embeddings, "image"
      else:
        queries, query_kind = model.encode_reports([args.text]).embeddings, "text"
    hits = top_k(index, queries, args.k, exclude=exclude)[0]
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"jimte retrieve: {e}", file=sys.stderr)
    return 2
  if args.heatmaps:
    write_heatmaps(args, model, index, hits)
  label = direction(query_kind, kind)
  if args.json:
    print(json.dumps(dict(direction=label, hits=[dataclasses.asdict(h) for h in hits]), indent=2))
  else:
    print(label)
    for h in hits:
      report = "" if h.report is None else " " + h.report[:120].replace("\n", " ")
      print(f"{h.rank:3d}  {h.score:+.4f}  {h.id}{report}")
  return 0


def write_heatmaps(args, model, index: export.Export, hits: list[Hit]) -> None:
  """A heatmap per hit through jimte.evaluate.heatmaps.write_heatmaps (image query + hit text)."""
  try:
    from jimte.evaluate.heatmaps import write_heatmaps as writer
  except ImportError as e:
    raise SystemExit(f"jimte retrieve: --heatmaps needs jimte.evaluate.heatmaps ({e})") from None
  if args.image is None or model is None:
    raise SystemExit("jimte retrieve: --heatmaps needs an --image query against reports")
  writer(model, [args.image] * len(hits), [h.report or "" for h in hits], args.heatmaps)


if __name__ == "__main__":
  sys.exit(main())
