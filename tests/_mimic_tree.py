"""Writes a small MIMIC-CXR-JPG 2.x tree (real layout and CSV columns) and what a build must give.

The tree has the PhysioNet layout: `files/p10/p10000032/s50414267/<dicom_id>.jpg`, the reports
next to the image folders (`files/p10/p10000032/s50414267.txt`), and the three CSVs of
MIMIC-CXR-JPG with their real column names. Its records are chosen so that every outcome of the
builder occurs: lateral and blank views, images missing from the split file, a duplicated
metadata row, missing / non-UTF-8 / empty / section-less reports, studies without a CheXpert row,
missing, corrupt, truncated, too small and RGB images. `MimicTree.accounting` is the per-split
`record_accounting` a build must store, tallied from those choices as the tree is written.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.names import CHEXPERT_OBSERVATIONS

METADATA_COLUMNS = (
  "dicom_id",
  "subject_id",
  "study_id",
  "PerformedProcedureStepDescription",
  "ViewPosition",
  "Rows",
  "Columns",
  "StudyDate",
  "StudyTime",
  "ProcedureCodeSequence_CodeMeaning",
  "ViewCodeSequence_CodeMeaning",
  "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS))
UNASSIGNED = "(unassigned)"

_VIEW_CODES = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
_VIEW_CODES.update({"LL": "left lateral", "": ""})
_FINDINGS = (
  "The lungs are clear.",
  "Heart size is normal.",
  "There is no pleural effusion or pneumothorax.",
  "Mild bibasilar atelectasis.",
  "The mediastinal contours are unremarkable.",
  "A right PICC terminates in the mid SVC.",
)
_IMPRESSIONS = ("No acute cardiopulmonary process.", "Mild pulmonary edema.", "Stable exam.")
_CELLS = ("1.0", "0.0", "-1.0", "")


@dataclasses.dataclass
class MimicTree:
  """A written tree: `root` holds the CSVs; `accounting` what a build must count per split."""

  root: Path
  accounting: dict[str, dict]
  kept: dict[str, set[str]]  # dicom ids kept, per split
  texts: dict[str, str]  # study_id -> expected `text` (FINDINGS then IMPRESSION)
  labels: dict[str, np.ndarray]  # study_id -> expected CheXpert vector (all NaN: no row)
  sizes: dict[str, tuple[int, int]]  # dicom_id -> stored (width, height)

  def counts(self) -> dict[str, int]:
    return {split: len(ids) for split, ids in self.kept.items() if ids}


class _Tally:
  """The expected `record_accounting`, in the builder's format."""

  def __init__(self):
    self.kept: collections.Counter = collections.Counter()
    self.kinds = {k: collections.defaultdict(collections.Counter) for k in ("skipped", "excluded")}
    self.kinds["notes"] = collections.defaultdict(collections.Counter)

  def add(self, kind: str, split: str, reason: str) -> None:
    self.kinds[kind][split][reason] += 1

  def as_dict(self) -> dict[str, dict]:
    splits = set(self.kept) | {s for by_split in self.kinds.values() for s in by_split}
    return {
      split: {
        "kept": self.kept[split],
        **{kind: dict(sorted(self.kinds[kind][split].items())) for kind in self.kinds},
      }
      for split in sorted(splits)
    }


def _csv_bytes(header, rows) -> bytes:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue().encode()


def _jpeg(rng: np.random.Generator, width: int, height: int, mode: str = "L") -> bytes:
  """A smooth random grayscale (or RGB) JPEG of width x height."""
  y, x = np.mgrid[0:height, 0:width]
  base = 128 + 60 * np.sin(x / rng.uniform(4, 12)) * np.cos(y / rng.uniform(4, 12))
  gray = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
  image = Image.fromarray(gray)
  if mode == "RGB":
    image = Image.merge("RGB", (image, image.point(lambda v: v // 2), image))
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


def _dicom_id(rng: np.random.Generator) -> str:
  return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5, dtype=np.uint64))


def write_mimic_tree(base: Path, *, subjects: int = 90, seed: int = 0) -> MimicTree:
  """Writes the tree under `base/physionet.org/files/mimic-cxr-jpg/2.0.0` (gzipped CSVs)."""
  rng = np.random.default_rng(seed)
  root = base / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
  root.mkdir(parents=True)
  tally = _Tally()
  tree = MimicTree(root, {}, {"train": set(), "validation": set(), "test": set()}, {}, {}, {})
  metadata, split_rows, chexpert_rows = [], [], []
  study_number = 0
  image_number = 0
  for s in range(subjects):
    subject = f"{10000032 + 7919 * s}"
    split_word = ("validate", "test")[s % 2] if s % 10 in (3, 6) else "train"
    split = "validation" if split_word == "validate" else split_word
    for _ in range(1 + s % 3):
      study_number += 1
      study = f"{50414267 + 104729 * study_number}"
      folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
      folder.mkdir(parents=True)
      # The report and its outcome for every frontal image of the study.
      findings = " ".join(rng.choice(_FINDINGS, 2, replace=False))
      impression = str(rng.choice(_IMPRESSIONS))
      report_fate = None
      if study_number % 17 == 5:
        report_fate = "missing report"
      elif study_number % 17 == 9:
        report_fate = "non-UTF-8 report"
        (folder.parent / f"s{study}.txt").write_bytes(b" FINDINGS: Opacit\xe9 at the base.\n")
      elif study_number % 17 == 13:
        report_fate = "empty report"
        (folder.parent / f"s{study}.txt").write_bytes(b"   \n \n")
      elif study_number % 11 == 4:
        whole = f"FINAL REPORT PORTABLE CHEST. {findings}"
        (folder.parent / f"s{study}.txt").write_text(f" {whole}\n")
        tree.texts[study] = whole
      else:
        wrapped = findings.replace(". ", ".\n ")  # one sentence a line, as in MIMIC
        (folder.parent / f"s{study}.txt").write_text(
          "                                 FINAL REPORT\n"
          " EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___F with cough\n\n"
          f" FINDINGS:\n {wrapped}\n\n IMPRESSION:\n {impression}\n"
        )
        tree.texts[study] = f"{findings} {impression}"
      if study_number % 7 == 2:
        tree.labels[study] = np.full(len(CHEXPERT_OBSERVATIONS), np.nan, np.float32)
      else:
        cells = {name: str(rng.choice(_CELLS)) for name in CHEXPERT_OBSERVATIONS}
        chexpert_rows.append([subject, study, *[cells[n] for n in sorted(cells)]])
        tree.labels[study] = np.array(
          [float(cells[n]) if cells[n] else np.nan for n in CHEXPERT_OBSERVATIONS], np.float32
        )
      for v in range(1 + (s + study_number) % 3):
        image_number += 1
        dicom = _dicom_id(rng)
        view = ("PA", "LATERAL", "AP", "PA", "LL", "AP", "")[(image_number + v) % 7]
        width, height = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        image_fate, mode = None, "L"
        if image_number % 41 == 7:
          image_fate = "missing image"
        elif image_number % 41 == 15:
          image_fate = "corrupt image"
          (folder / f"{dicom}.jpg").write_bytes(rng.bytes(300))
        elif image_number % 41 == 23:
          image_fate = "truncated image"
          data = _jpeg(rng, width, height)
          (folder / f"{dicom}.jpg").write_bytes(data[: len(data) // 2])
        elif image_number % 41 == 31:
          image_fate = "image too small"
          width = 40
          (folder / f"{dicom}.jpg").write_bytes(_jpeg(rng, width, height))
        else:
          mode = "RGB" if image_number % 29 == 11 else "L"
          (folder / f"{dicom}.jpg").write_bytes(_jpeg(rng, width, height, mode))
        tree.sizes[dicom] = (width, height)
        row = [
          dicom,
          subject,
          study,
          "CHEST (PA AND LAT)",
          view,
          height,
          width,
          f"2{180 + s % 20:03d}0{1 + s % 9}1{s % 10}",
          f"{101010 + 37 * image_number}.{image_number % 1000:03d}",
          "CHEST (PA AND LAT)",
          _VIEW_CODES[view],
          "Erect",
        ]
        metadata.append(row)
        listed = image_number % 53 != 19  # a few images are absent from the split file
        if listed:
          split_rows.append([dicom, study, subject, split_word])
        where = split if listed else UNASSIGNED
        if view not in ("PA", "AP"):
          tally.add("excluded", where, "not frontal view")
          continue
        if not listed:
          tally.add("excluded", UNASSIGNED, "not in official split")
          continue
        if image_number % 37 == 3:  # the metadata lists this image twice
          metadata.append(row)
          tally.add("skipped", split, "duplicate id")
        fate = report_fate or image_fate
        if fate is not None:
          tally.add("skipped", split, fate)
          continue
        tally.kept[split] += 1
        tree.kept[split].add(dicom)
        if mode == "RGB":
          tally.add("notes", split, "image converted from mode RGB")
        if study_number % 11 == 4:
          tally.add("notes", split, "no FINDINGS/IMPRESSION (whole report used)")
        if study_number % 7 == 2:
          tally.add("notes", split, "no CheXpert labels")
  for name, header, rows in (
    ("metadata", METADATA_COLUMNS, metadata),
    ("split", SPLIT_COLUMNS, split_rows),
    ("chexpert", CHEXPERT_COLUMNS, chexpert_rows),
  ):
    (root / f"mimic-cxr-2.0.0-{name}.csv.gz").write_bytes(gzip.compress(_csv_bytes(header, rows)))
  tree.accounting = tally.as_dict()
  return tree
