"""Benchmark the rule-based report labeler on all OpenI (IU X-ray) reports against the MeSH labels.

Runs `data_pipeline.labels.ReportLabeler` over every report of `iu_xray/reports_openi.csv`
(text = findings + impression), compares it per observation with the manual OpenI MeSH major
annotation (column `mesh_major`), and prints markdown tables (precision, recall, F1, support) plus
the runtime. It prints numbers only; it never passes or fails.

The reference. `mesh_major` is a `;`-separated list of terms `Heading/qualifier/...` (e.g.
`Pulmonary Atelectasis/base/left`) naming what the annotator found present, or `normal`. An
observation is present in the reference when some term maps to it under `MESH_TO_CHEXPERT` below;
reports annotated `No Indexing` (never annotated) are left out. Observations the MeSH vocabulary
does not express are not scored. The mapping follows the CheXpert definitions and the CheXpert
phrase lists (e.g. "scar" and "interstitial markings" are Lung Opacity phrases there, "fibrosis" a
Pleural Other phrase, "vascular congestion" and "chf" Edema phrases), so a labeler that follows the
lists is scored against the same concepts.

The prediction. "positive" scores labeler value 1 as present; "positive+uncertain" scores 1 or -1.
Negative (0) and unmentioned (nan) are absent.

Places. Many MeSH terms carry a side (`left`/`right`/`bilateral`) and a lung zone (`base`,
`apex`, `upper lobe`, `lingula`, ...). For the lung observations, wherever both the reference
and the labeler (positive or uncertain) have the observation, the side the labeler's Chest ImaGenome
regions name is compared with the MeSH side (exact match of the side set), and the MeSH zone is
looked up among the labeler's zones. This measures `finding_regions` against human annotation.

Usage::

    python benchmarks/bench_labeler.py [--reports CSV] [--phrases DIR] [--errors OBSERVATION [N]]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from data_pipeline.labels import LabelResult, ReportLabeler  # noqa: E402
from data_pipeline.names import CHEXPERT_OBSERVATIONS, LUNG_OBSERVATIONS  # noqa: E402

DEFAULT_REPORTS = REPO.parent / "shared" / "data" / "iu_xray" / "reports_openi.csv"


def _has(*words: str) -> Callable[[Sequence[str]], bool]:
  """Qualifier test: true when any of `words` is among a term's qualifiers."""
  wanted = set(words)
  return lambda quals: bool(wanted.intersection(quals))


def _always(_quals: Sequence[str]) -> bool:
  return True


# MeSH heading -> [(CheXpert observation, qualifier test)]. A term counts for the observation when
# its heading is listed and the test accepts its qualifiers (e.g. a Cicatrix of the lung is a lung
# opacity, a Cicatrix of the pleura is Pleural Other).
MESH_TO_CHEXPERT: dict[str, list[tuple[str, Callable[[Sequence[str]], bool]]]] = {
  "normal": [("No Finding", _always)],
  "Mediastinum": [("Enlarged Cardiomediastinum", _has("prominent", "enlarged", "widened"))],
  "Cardiomegaly": [("Cardiomegaly", _always)],
  "Cardiac Shadow": [("Cardiomegaly", _has("enlarged"))],
  "Nodule": [("Lung Lesion", _always)],
  "Mass": [("Lung Lesion", _always)],
  "Lung Neoplasms": [("Lung Lesion", _always)],
  "Opacity": [("Lung Opacity", _always)],
  "Airspace Disease": [("Lung Opacity", _always)],
  "Infiltrate": [("Lung Opacity", _always)],
  "Density": [("Lung Opacity", _has("lung"))],
  "Cicatrix": [("Lung Opacity", _has("lung")), ("Pleural Other", _has("pleura"))],
  "Markings": [("Lung Opacity", _has("interstitial"))],
  "Lung Diseases, Interstitial": [("Lung Opacity", _always)],
  "Pulmonary Edema": [("Edema", _always)],
  "Pulmonary Congestion": [("Edema", _always)],
  "Heart Failure": [("Edema", _always)],
  "Consolidation": [("Consolidation", _always)],
  "Pneumonia": [("Pneumonia", _always)],
  "Pulmonary Atelectasis": [("Atelectasis", _always)],
  "Pneumothorax": [("Pneumothorax", _always)],
  "Hydropneumothorax": [("Pneumothorax", _always), ("Pleural Effusion", _always)],
  "Hemopneumothorax": [("Pneumothorax", _always)],
  "Pleural Effusion": [("Pleural Effusion", _always)],
  "Thickening": [("Pleural Other", _has("pleura"))],
  "Pulmonary Fibrosis": [("Pleural Other", _always)],
  "Fibrosis": [("Pleural Other", _always)],
  "Fractures, Bone": [("Fracture", _always)],
  "Catheters, Indwelling": [("Support Devices", _always)],
  "Implanted Medical Device": [("Support Devices", _always)],
  "Medical Device": [("Support Devices", _always)],
  "Tube, Inserted": [("Support Devices", _always)],
}
SCORED = tuple(
  o for o in CHEXPERT_OBSERVATIONS if any(o == t for v in MESH_TO_CHEXPERT.values() for t, _ in v)
)


_MESH_SIDES = {"left": {"left"}, "right": {"right"}, "bilateral": {"left", "right"}}
_MESH_ZONES = {
  "base": "lower",
  "lower lobe": "lower",
  "retrocardiac": "lower",
  "apex": "apical",
  "upper lobe": "upper",
  "middle lobe": "mid",
  "lingula": "mid",
  "hilum": "hilar",
  "costophrenic angle": "cpa",
}
_REGION_ZONES = {
  "lower lung zone": "lower",
  "apical zone": "apical",
  "upper lung zone": "upper",
  "mid lung zone": "mid",
  "hilar structures": "hilar",
  "costophrenic angle": "cpa",
}


# One report's reference: `{observation: (sides, zones)}` of the observations MeSH says are
# present.
Reference = dict[str, tuple[set[str], set[str]]]


def mesh_terms(mesh_major: str) -> Reference:
  """`{observation: (sides, zones)}` present according to one report's `mesh_major` string."""
  present: Reference = {}
  for term in mesh_major.split(";"):
    parts = [p.strip() for p in term.split("/") if p.strip()]
    if not parts:
      continue
    heading, quals = parts[0], [q.lower() for q in parts[1:]]
    for obs, test in MESH_TO_CHEXPERT.get(heading, ()):
      if test(quals):
        sides, zones = present.setdefault(obs, (set(), set()))
        for q in quals:
          sides.update(_MESH_SIDES.get(q, ()))
          if q in _MESH_ZONES:
            zones.add(_MESH_ZONES[q])
  return present


def load_reports(path: Path) -> tuple[list[str], list[str], list[Reference]]:
  """(uids, report texts, MeSH `{observation: (sides, zones)}`) of the indexed reports."""
  uids, texts, refs = [], [], []
  with open(path, newline="", encoding="utf-8") as fh:
    for row in csv.DictReader(fh):
      if row["mesh_major"].strip().lower() == "no indexing":
        continue
      uids.append(row["uid"])
      texts.append(" ".join(x.strip() for x in (row["findings"], row["impression"]) if x.strip()))
      refs.append(mesh_terms(row["mesh_major"]))
  return uids, texts, refs


def place_agreement(results: Sequence[LabelResult], refs: Sequence[Reference]) -> str:
  """Markdown table: side exact-match and zone hit rates of the labeler's regions vs MeSH."""
  lines = [
    "| observation | side: pairs | side: exact match | zone: pairs | zone: MeSH zone among "
    "labeler's |",
    "|---|---:|---:|---:|---:|",
  ]
  tot = np.zeros(4, dtype=int)
  for obs in LUNG_OBSERVATIONS:  # the observations whose places are scored
    side_n = side_ok = zone_n = zone_ok = 0
    for res, ref in zip(results, refs, strict=True):
      if obs not in ref:
        continue
      regions = res.finding_regions().get(obs)
      if not regions:
        continue
      sides = {
        r.split(" ", 1)[0]
        for r in regions
        if r.split(" ", 1)[0] in ("left", "right") and r != "right atrium"
      }
      zones = {
        _REGION_ZONES[r.split(" ", 1)[1]] for r in regions if r.split(" ", 1)[-1] in _REGION_ZONES
      }
      mesh_sides, mesh_zones = ref[obs]
      if mesh_sides:
        side_n += 1
        side_ok += sides == mesh_sides
      if mesh_zones:
        zone_n += 1
        zone_ok += bool(mesh_zones & zones)
    tot += (side_n, side_ok, zone_n, zone_ok)
    lines.append(
      f"| {obs} | {side_n} | {_rate(side_ok, side_n)} | {zone_n} | {_rate(zone_ok, zone_n)} |"
    )
  lines.append(
    f"| **all** | {tot[0]} | {_rate(tot[1], tot[0])} | {tot[2]} | {_rate(tot[3], tot[2])} |"
  )
  return "\n".join(lines)


def _rate(k: int, n: int) -> str:
  return f"{k / n:.3f}" if n else "n/a"


def score(
  labels: np.ndarray, refs: Sequence[Reference], with_uncertain: bool
) -> dict[str, tuple[int, int, int]]:
  """Per observation (TP, FP, FN) of labeler presence vs MeSH presence."""
  out = {}
  for obs in SCORED:
    j = CHEXPERT_OBSERVATIONS.index(obs)
    col = labels[:, j]
    pred = (col == 1) | ((col == -1) if with_uncertain else False)
    ref = np.array([obs in r for r in refs])
    out[obs] = (int(np.sum(pred & ref)), int(np.sum(pred & ~ref)), int(np.sum(~pred & ref)))
  return out


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
  p = tp / (tp + fp) if tp + fp else float("nan")
  r = tp / (tp + fn) if tp + fn else float("nan")
  f = 2 * p * r / (p + r) if tp else 0.0
  return p, r, f


def markdown_table(counts: dict[str, tuple[int, int, int]]) -> str:
  """Markdown table of precision/recall/F1/support per observation plus micro averages."""
  lines = [
    "| observation | precision | recall | F1 | support (MeSH) | predicted |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  tot = np.zeros(3, dtype=int)
  tot_f = np.zeros(3, dtype=int)
  for obs, (tp, fp, fn) in counts.items():
    p, r, f = _prf(tp, fp, fn)
    lines.append(f"| {obs} | {p:.3f} | {r:.3f} | {f:.3f} | {tp + fn} | {tp + fp} |")
    tot += (tp, fp, fn)
    if obs != "No Finding":
      tot_f += (tp, fp, fn)
  for name, t in (("micro, findings (no No Finding)", tot_f), ("micro, all", tot)):
    p, r, f = _prf(*t)
    lines.append(f"| **{name}** | {p:.3f} | {r:.3f} | {f:.3f} | {t[0] + t[2]} | {t[0] + t[1]} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="reports_openi.csv")
  ap.add_argument("--phrases", type=Path, default=None, help="CheXpert phrases directory")
  ap.add_argument(
    "--errors",
    nargs="+",
    metavar=("OBSERVATION", "N"),
    help="print up to N (default 15) false positives and false negatives of an observation",
  )
  args = ap.parse_args(argv)

  if not args.reports.is_file():
    raise SystemExit(f"reports file not found: {args.reports}")
  uids, texts, refs = load_reports(args.reports)

  t0 = time.perf_counter()
  labeler = ReportLabeler(args.phrases)
  t1 = time.perf_counter()
  results = [labeler.label(t) for t in texts]
  t2 = time.perf_counter()
  labels = np.stack([r.labels for r in results])

  print(f"OpenI reports scored: {len(texts)} (reports annotated 'No Indexing' left out)")
  print(
    f"labeler build: {t1 - t0:.3f} s; labeling: {t2 - t1:.2f} s "
    f"({len(texts) / (t2 - t1):.0f} reports/s, {1e3 * (t2 - t1) / len(texts):.2f} ms/report)\n"
  )
  for with_unc, title in (
    (False, "labeler positive (1)"),
    (True, "labeler positive or uncertain (1 or -1)"),
  ):
    print(f"### Agreement with OpenI MeSH, {title}\n")
    print(markdown_table(score(labels, refs, with_unc)))
    print()
  print("### Places of findings (labeler regions vs MeSH side/zone qualifiers)\n")
  print(place_agreement(results, refs))
  print()

  if args.errors:
    obs = args.errors[0]
    n = int(args.errors[1]) if len(args.errors) > 1 else 15
    if obs not in CHEXPERT_OBSERVATIONS:
      raise SystemExit(f"unknown observation {obs!r}")
    j = CHEXPERT_OBSERVATIONS.index(obs)
    fps = [i for i in range(len(texts)) if labels[i, j] == 1 and obs not in refs[i]]
    fns = [i for i in range(len(texts)) if labels[i, j] != 1 and obs in refs[i]]
    for name, idx in (("false positives", fps), ("false negatives", fns)):
      print(f"### {obs}: {len(idx)} {name}")
      for i in idx[:n]:
        ms = [f"{m.phrase}:{m.status}" for m in results[i].mentions if m.observation == obs]
        print(f"- {uids[i]} label={labels[i, j]} mentions={ms}\n  {texts[i]}")
      print()


if __name__ == "__main__":
  main()
