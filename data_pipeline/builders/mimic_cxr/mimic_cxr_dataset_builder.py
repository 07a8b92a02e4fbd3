"""TFDS builder for MIMIC-CXR-JPG 2.x (chest X-ray JPEGs + free-text radiology reports).

Source: Johnson et al., MIMIC-CXR-JPG (PhysioNet, credentialed access:
https://physionet.org/content/mimic-cxr-jpg/). Nothing is downloaded: the data must be placed in
`--manual_dir` under the PhysioNet data use agreement.

`--manual_dir` layout (the PhysioNet layout; the folder holding the CSVs may also be up to
four levels below `manual_dir`, e.g. `physionet.org/files/mimic-cxr-jpg/2.0.0/`)::

    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, <14 observations>
    files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
    reports, one of:
      mimic-cxr-reports/files/pXX/pSUBJECT/sSTUDY.txt   (mimic-cxr-reports.zip, extracted)
      files/pXX/pSUBJECT/sSTUDY.txt                     (next to the image folders)
      mimic-cxr-reports.zip                             (read in place)

One example per frontal image (`ViewPosition` `PA` or `AP`; other views are excluded as
`not frontal view`), in the official split (`validate` is named `validation`; images absent
from the split file are excluded as `not in official split`). Images of one study share
`study_id` (`s<study_id>`) and the report; `patient_id` is `p<subject_id>`.

`labels` are the 14 CheXpert observations of the study in
`data_pipeline.names.CHEXPERT_OBSERVATIONS` order: 1 positive, 0 negative,
-1 uncertain, NaN blank. A study missing from the CheXpert file gets all-NaN labels (counted in
the notes as `no CheXpert labels`).

`text` is the FINDINGS section followed by the IMPRESSION section (`FINDINGS AND
IMPRESSION` counts as findings; `CONCLUSION` as impression). A section header is an
upper-case phrase at the start of a line followed by a colon; a section runs to the next header.
When a report has neither section, the whole report (whitespace collapsed) is used and counted in
the notes as `no FINDINGS/IMPRESSION (whole report used)`. A missing report file is skipped as
`missing report`; empty or non-UTF-8 reports as `empty report` / `non-UTF-8 report`.

Stored size: one config per training resolution, so that training decodes no more pixels than
it uses: `frontal` (the default; longer side <= 2048 px, the input size of
`configs/joimternet_paper.py`), `frontal_1024`, `frontal_512` (runs at those input sizes) and
`frontal_native` (the files' own size, ~2500 x 3000 px: the original release's 2048 px crop at
native scale). PNG by default; `--config '{"name": "frontal_512_jpeg", "max_side": 512,
"image_encoding": "jpeg"}'` stores JPEG (smaller, faster to decode, lossy).

Anatomical boxes (ALC-ITR, docs/alc_itr.md): with `"imagenome": true` in the config (e.g.
`--config '{"name": "frontal_imagenome", "imagenome": true}'`) each example also gets
`region_boxes`, float32 [29, 4]: the Chest ImaGenome silver scene graph of its dicom id
(`data_pipeline.imagenome.read_scene_graph`), read from a folder named `scene_graph` under
`--manual_dir` (Chest ImaGenome's `silver_dataset/scene_graph.zip`, unzipped), its pixel boxes
divided by the stored JPEG's size (MIMIC-CXR-JPG keeps the DICOM's resolution; normalised boxes do
not change when the image is resized). NaN rows mark regions the graph lacks; an image without a
scene graph, or with an unreadable one, keeps all-NaN boxes and is counted in the notes, as are
the objects the reader ignores or clips.

Single process or Apache Beam. Planning (the three CSVs streamed once into per-split lists of
studies) always runs in the launching process and counts the exclusions there. With Beam options
(`tfds build ... --beam_pipeline_options=...`, or `tfds.download.DownloadConfig(beam_options=...)`)
and `apache_beam` installed, the plan is written as JSON lines under the dataset's (incomplete)
data directory and each split is a Beam pipeline `ReadFromText | Reshuffle | FlatMap`; the
per-study work (`studies.StudyReader.examples`, the same function as the single-process build,
so both builds yield the same keys and features) runs on the workers, which count skips and notes
as Beam metrics that are added to the ledger once the pipeline is done. Without Beam options, or
without apache_beam, the build runs in one process.

On this machine (DirectRunner, two worker processes)::

    tfds build data_pipeline/builders/mimic_cxr --manual_dir MIMIC --data_dir DATA \
      --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

On Google Cloud Dataflow at full size (the workers install the project from a wheel; the data,
the plan and the output are on GCS; `--manual_dir` is the folder holding the CSVs)::

    pip install 'apache-beam[gcp]'   # the Dataflow runner's client, on the launching machine
    pip wheel --no-deps -w dist .
    OPTS=runner=DataflowRunner,project=PROJECT,region=REGION,job_name=mimic-cxr-frontal
    OPTS=$OPTS,temp_location=gs://BUCKET/beam/tmp,staging_location=gs://BUCKET/beam/staging
    OPTS=$OPTS,extra_package=dist/jimte-0.1.0-py3-none-any.whl
    OPTS=$OPTS,machine_type=n2-standard-4,max_num_workers=32
    tfds build data_pipeline/builders/mimic_cxr --config frontal \
      --manual_dir gs://BUCKET/mimic-cxr-jpg/2.0.0 --data_dir gs://BUCKET/tfds \
      --beam_pipeline_options="$OPTS"
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

try:
  from data_pipeline import names
  from data_pipeline.builders import base, image_io, sources, validation
  from data_pipeline.builders.mimic_cxr import studies
except ModuleNotFoundError:  # `tfds build <path>` run without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
  from data_pipeline import names
  from data_pipeline.builders import base, image_io, sources, validation
  from data_pipeline.builders.mimic_cxr import studies

extract_sections = studies.extract_sections
findings_and_impression = studies.findings_and_impression

NOT_FRONTAL = "not frontal view"
NOT_IN_SPLIT = "not in official split"
NO_LABELS = studies.NO_LABELS
WHOLE_REPORT = studies.WHOLE_REPORT

CSV_PREFIX = "mimic-cxr-2.0.0-"
PLAN_DIR = "_beam_plan"
_SPLIT_NAMES = {
  "train": "train",
  "validate": "validation",
  "validation": "validation",
  "test": "test",
}
_SHARD_DIR = re.compile(r"^[ps]\d+$")
SCENE_GRAPH_DIR = "scene_graph"

_DESCRIPTION = """\
MIMIC-CXR-JPG: frontal chest radiographs with their free-text reports (findings + impression),
CheXpert labels and the official patient-disjoint split.
"""

_CITATION = """\
@article{johnson2019mimicjpg,
  title={MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs},
  author={Johnson, Alistair EW and Pollard, Tom J and Greenbaum, Nathaniel R and Lungren,
          Matthew P and Deng, Chih-ying and Peng, Yifan and Lu, Zhiyong and Mark, Roger G and
          Berkowitz, Seth J and Horng, Steven},
  journal={arXiv preprint arXiv:1901.07042},
  year={2019}
}
"""


@dataclasses.dataclass(eq=False)
class MimicCxrConfig(base.ImageBuilderConfig):
  """Config of `Builder`.

  Attributes:
    views: accepted `ViewPosition` values (default: the frontal `PA` and `AP`).
    imagenome: also read Chest ImaGenome's silver scene graphs into a `region_boxes` feature
      (see the module docstring).
  """

  views: Sequence[str] = ("PA", "AP")
  imagenome: bool = False

  def __post_init__(self):
    super().__post_init__()
    self.views = tuple(str(v).strip().upper() for v in self.views)


def beam_requested(download_config: tfds.download.DownloadConfig | None) -> bool:
  """Whether a build asked for Apache Beam (a runner or pipeline options were given)."""
  if download_config is None:
    return False
  return download_config.beam_runner is not None or download_config.beam_options is not None


class Builder(base.ValidatingBuilder):
  """MIMIC-CXR-JPG frontal images with report findings/impression and CheXpert labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    MimicCxrConfig(
      name="frontal",
      description="PA/AP images, official split, longer side <= 2048 px (the paper's input).",
    ),
    MimicCxrConfig(
      name="frontal_1024",
      description="PA/AP images, official split, longer side <= 1024 px.",
      max_side=1024,
    ),
    MimicCxrConfig(
      name="frontal_512",
      description="PA/AP images, official split, longer side <= 512 px.",
      max_side=512,
    ),
    MimicCxrConfig(
      name="frontal_native",
      description="PA/AP images, official split, stored at the files' own size.",
      max_side=None,
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "frontal"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download MIMIC-CXR-JPG 2.x from https://physionet.org/content/mimic-cxr-jpg/ (credentialed
    access) and the reports (`mimic-cxr-reports.zip`) from
    https://physionet.org/content/mimic-cxr/. Pass as `--manual_dir` the folder holding
    mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz and `files/`; put the reports there as
    `mimic-cxr-reports.zip`, as the extracted `mimic-cxr-reports/files/...`, or as
    `files/pXX/pSUBJECT/sSTUDY.txt` next to the image folders.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": image_io.image_feature(
            self.builder_config.image_encoding, "frontal chest X-ray"
          ),
          "text": tfds.features.Text(doc="FINDINGS then IMPRESSION"),
          "findings": tfds.features.Text(),
          "impression": tfds.features.Text(),
          "study_id": tfds.features.Text(doc="s<study_id>"),
          "patient_id": tfds.features.Text(doc="p<subject_id>"),
          "dicom_id": tfds.features.Text(),
          "view_position": tfds.features.Text(doc="PA or AP"),
          "labels": tfds.features.Tensor(
            shape=(len(names.CHEXPERT_OBSERVATIONS),),
            dtype=np.float32,
            doc="CheXpert: 1 pos, 0 neg, -1 uncertain, NaN blank; order: "
            + ", ".join(names.CHEXPERT_OBSERVATIONS),
          ),
          **self._region_box_feature(),
        }
      ),
      homepage="https://physionet.org/content/mimic-cxr-jpg/",
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _region_box_feature(self) -> dict:
    if not self.builder_config.imagenome:
      return {}
    return {
      "region_boxes": tfds.features.Tensor(
        shape=(len(names.CHEST_IMAGENOME_REGIONS), 4),
        dtype=np.float32,
        doc="Chest ImaGenome silver boxes, normalised [y0, x0, y1, x1] on the image, in "
        "data_pipeline.names.CHEST_IMAGENOME_REGIONS order; NaN rows: region absent",
      )
    }

  # ------------------------------------------------------------------ sources
  @staticmethod
  def _find_scene_graphs(manual: epath.Path) -> epath.Path:
    """The Chest ImaGenome folder of `<dicom_id>_SceneGraph.json` files: a folder named
    `scene_graph` (breadth-first, <= 6 levels below `manual`, MIMIC's shards never entered)."""
    frontier = [manual]
    for _ in range(7):
      next_frontier = []
      for folder in frontier:
        subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir()]
        for p in subfolders:
          if p.name == SCENE_GRAPH_DIR:
            return p
        next_frontier += [p for p in subfolders if not _SHARD_DIR.match(p.name)]
      frontier = next_frontier
    raise FileNotFoundError(
      f"No {SCENE_GRAPH_DIR}/ folder under {manual} (config imagenome=True). Download Chest "
      "ImaGenome (https://physionet.org/content/chest-imagenome/) into the manual dir and unzip "
      f"silver_dataset/scene_graph.zip there, giving .../silver_dataset/{SCENE_GRAPH_DIR}/"
      "<dicom_id>_SceneGraph.json."
    )

  @staticmethod
  def _find_root(manual: epath.Path) -> epath.Path:
    """The folder holding the MIMIC-CXR-JPG CSVs (breadth-first, <= 4 levels below).

    The per-patient image and report shards (`pXX`, `pSUBJECT`, `sSTUDY`) are never
    entered, so the search stays cheap on the full archive.
    """
    frontier = [manual]
    for _ in range(5):
      next_frontier = []
      for folder in frontier:
        if sources.find_first(
          folder, (CSV_PREFIX + "metadata.csv.gz", CSV_PREFIX + "metadata.csv")
        ):
          return folder
        next_frontier += [
          p for p in sorted(folder.iterdir()) if p.is_dir() and not _SHARD_DIR.match(p.name)
        ]
      frontier = next_frontier
    raise FileNotFoundError(
      f"No {CSV_PREFIX}metadata.csv[.gz] under {manual}.\n{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )

  @staticmethod
  def _csv(root: epath.Path, name: str) -> Iterator[dict[str, str]]:
    path = sources.find_first(root, (f"{CSV_PREFIX}{name}.csv.gz", f"{CSV_PREFIX}{name}.csv"))
    if path is None:
      raise FileNotFoundError(f"{CSV_PREFIX}{name}.csv[.gz] not found in {root}")
    with path.open("rb") as raw:
      stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
      yield from csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))

  # ------------------------------------------------------------------ planning
  def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
    """Notes whether this build runs on Beam (see the module docstring), then builds."""
    self._use_beam = beam_requested(download_config)
    self._beam_splits: list[str] = []
    super()._download_and_prepare(dl_manager, download_config, **kwargs)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self._new_ledger()
    root = self._find_root(epath.Path(dl_manager.manual_dir))
    official: dict[str, str] = {}
    for row in self._csv(root, "split"):
      split = _SPLIT_NAMES.get((row.get("split") or "").strip().lower())
      if split is not None:
        official[row["dicom_id"].strip()] = split
    labels: dict[str, tuple[float, ...]] = {}
    for row in self._csv(root, "chexpert"):
      labels[row["study_id"].strip()] = tuple(float(v) for v in sources.chexpert_vector(row))
    plan = self._plan(root, official, labels)
    self._report_unassigned()
    config = self.builder_config
    scene_graphs = None
    if config.imagenome:
      scene_graphs = str(self._find_scene_graphs(epath.Path(dl_manager.manual_dir)))
    reader = studies.StudyReader(
      root=str(root),
      min_side=config.min_side,
      max_side=config.max_side,
      resize_side=config.resize_side,
      dataset=self.name,
      strict=self.strict,
      scene_graphs=scene_graphs,
    )
    splits = self._non_empty_splits(plan)
    if getattr(self, "_use_beam", False):
      self._beam_splits = list(splits)
      return {name: self._beam_examples(name, plan, reader) for name, plan in splits.items()}
    return {name: self._generate_examples(name, plan, reader) for name, plan in splits.items()}

  def _plan(
    self,
    root: epath.Path,
    official: dict[str, str],
    labels: dict[str, tuple[float, ...]],
  ) -> dict[str, list[studies.Study]]:
    """Per split, the studies with their frontal images, in metadata order."""
    views = set(self.builder_config.views)
    ledger = self.ledger
    grouped: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for row in self._csv(root, "metadata"):
      dicom = (row.get("dicom_id") or "").strip()
      split = official.get(dicom)
      view = (row.get("ViewPosition") or "").strip().upper()
      if view not in views:
        ledger.exclude(split, NOT_FRONTAL, dicom)
        continue
      if split is None:
        ledger.exclude(None, NOT_IN_SPLIT, dicom)
        continue
      if dicom in seen:
        ledger.reject(
          split,
          validation.DUPLICATE_ID,
          dicom,
          source=root / f"{CSV_PREFIX}metadata.csv",
          detail="dicom_id listed twice in the metadata",
        )
        continue
      seen.add(dicom)
      key = (split, row["subject_id"].strip(), row["study_id"].strip())
      grouped.setdefault(key, []).append((dicom, view))
    plan: dict[str, list[studies.Study]] = {"train": [], "validation": [], "test": []}
    for (split, subject, study), images in grouped.items():
      plan[split].append(studies.Study(split, subject, study, labels.get(study), tuple(images)))
    return plan

  # ------------------------------------------------------------------ generation
  def _generate_examples(
    self, split: str, plan: list[studies.Study], reader: studies.StudyReader
  ) -> Iterator[tuple[str, dict]]:
    """Single-process generation of one split."""
    try:
      for study in plan:
        yield from reader.examples(study, self.ledger)
    finally:
      self._finish_split(split)
    self._check_split_nonempty(split)

  def _beam_examples(self, split: str, plan: list[studies.Study], reader: studies.StudyReader):
    """The Beam transform of one split: the plan as JSON lines, spread over the workers."""
    beam = tfds.core.lazy_imports.apache_beam
    path = epath.Path(self.data_dir) / PLAN_DIR / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(study.to_json() + "\n" for study in plan))
    return (
      beam.io.ReadFromText(str(path))
      | f"Spread_{split}" >> beam.Reshuffle()
      | f"Examples_{split}" >> beam.FlatMap(reader.beam_examples)
    )

  def _process_pipeline_result(self, pipeline_result) -> None:
    """Adds the workers' counts (Beam metrics) to the ledger, reports, removes the plan."""
    beam = tfds.core.lazy_imports.apache_beam
    query = pipeline_result.metrics().query(
      beam.metrics.MetricsFilter().with_namespace(studies.METRICS_NAMESPACE)
    )
    ledger = self.ledger
    saved = ledger.strict, ledger.log_examples
    ledger.strict, ledger.log_examples = False, 0  # workers already logged (and were strict).
    try:
      for result in query["counters"]:
        split, kind, reason = studies.parse_metric_name(result.key.metric.name)
        count = result.committed if result.committed is not None else result.attempted
        for _ in range(int(count)):
          if kind == "kept":
            ledger.accept(split)
          elif kind == "skipped":
            ledger.reject(split, reason, "")
          else:
            ledger.note(split, reason)
    finally:
      ledger.strict, ledger.log_examples = saved
    plan_dir = epath.Path(self.data_dir) / PLAN_DIR
    if plan_dir.exists():
      plan_dir.rmtree()
    for split in self._beam_splits:
      self._finish_split(split)
    for split in self._beam_splits:
      self._check_split_nonempty(split)
