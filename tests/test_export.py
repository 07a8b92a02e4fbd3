"""jimte.export: Parquet parts + manifest round trip, resume after an interruption (same part
contents as an uninterrupted export), refusal to overwrite, and per-part skipped inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from jimte import export

SETTINGS = dict(model_name="tiny", config_hash="0123456789abcdef", source="arrays", kind="image")
MANIFEST = dict(
  model_name="tiny", step=7, config_hash="0123456789abcdef", tokenizer="t.model", kind="image"
)


def batches(n=23, batch=5, d=4):
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((n, d)).astype(np.float32)
  regions = rng.standard_normal((n, 2, 2, d)).astype(np.float32)
  ids = [f"case{i:03d}" for i in range(n)]
  reports = [f"report {i}" for i in range(n)]
  out = [
    dict(
      id=ids[s : s + batch],
      embedding=emb[s : s + batch],
      regions=regions[s : s + batch],
      report=reports[s : s + batch],
    )
    for s in range(0, n, batch)
  ]
  return out, ids, emb, regions, reports


def part_contents(path):
  return [
    pq.read_table(os.path.join(path, p)) for p in sorted(os.listdir(path)) if p.endswith(".parquet")
  ]


def test_round_trip_and_manifest(tmp_path):
  rows, ids, emb, regions, reports = batches()
  out = str(tmp_path / "exp")
  manifest = export.write_rows(out, rows, settings=SETTINGS, manifest=MANIFEST, part_size=6)
  assert manifest["count"] == 23 and manifest["dim"] == 4 and manifest["dtype"] == "float32"
  assert manifest["parts"] == [export.part_name(0, i) for i in range(4)]
  for key in (
    "model_name",
    "step",
    "config_hash",
    "tokenizer",
    "kind",
    "created",
    "format_version",
  ):
    assert key in manifest, key
  with open(os.path.join(out, export.MANIFEST)) as f:
    assert json.load(f) == manifest
  back = export.read_export(out, columns=("regions",))
  assert back.ids == ids and back.reports == reports
  np.testing.assert_array_equal(back.embeddings, emb)
  np.testing.assert_array_equal(back.extra["regions"], regions)
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
  rows = batches()[0]
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  export.write_rows(full, rows, settings=SETTINGS, manifest=MANIFEST, part_size=6)
  assert (
    export.write_rows(
      cut, rows, settings=SETTINGS, manifest=MANIFEST, part_size=6, stop_after_parts=2
    )
    is None
  )
  assert not os.path.exists(os.path.join(cut, export.MANIFEST))
  assert len(part_contents(cut)) == 2
  # a half-written temp part of the killed run is cleaned on resume
  with open(os.path.join(cut, export.part_name(0, 2) + ".p000.tmp"), "wb") as f:
    f.write(b"junk")
  export.write_rows(cut, rows, settings=SETTINGS, manifest=MANIFEST, part_size=6)
  a, b = part_contents(full), part_contents(cut)
  assert len(a) == len(b) == 4
  for x, y in zip(a, b, strict=True):
    assert x.equals(y)
  assert sorted(os.listdir(full)) == sorted(os.listdir(cut))


def test_resume_with_other_settings_refused(tmp_path):
  out = str(tmp_path / "exp")
  export.write_rows(
    out, batches()[0], settings=SETTINGS, manifest=MANIFEST, part_size=6, stop_after_parts=1
  )
  with pytest.raises(ValueError, match="config_hash"):
    export.write_rows(
      out, batches()[0], settings={**SETTINGS, "config_hash": "ff"}, manifest=MANIFEST, part_size=6
    )


def test_finished_export_not_overwritten(tmp_path):
  out = str(tmp_path / "exp")
  export.write_rows(out, batches()[0], settings=SETTINGS, manifest=MANIFEST, part_size=6)
  with pytest.raises(export.ExportExistsError, match="--overwrite"):
    export.write_rows(out, batches()[0], settings=SETTINGS, manifest=MANIFEST, part_size=6)
  small = batches(n=4)[0]
  manifest = export.write_rows(
    out, small, settings=SETTINGS, manifest=MANIFEST, part_size=6, overwrite=True
  )
  assert manifest["count"] == 4 and len(part_contents(out)) == 1


def test_skipped_inputs_listed_in_manifest(tmp_path):
  out = str(tmp_path / "exp")
  writer = export.ExportWriter(out, SETTINGS, part_size=3).open()
  rows = batches(n=6, batch=6)[0][0]
  writer.add({k: v[:2] for k, v in rows.items()})
  writer.skip(dict(source="bad.png", error="not an image"))
  writer.add({k: v[2:] for k, v in rows.items()})
  writer.skip(dict(source="last.png", error="truncated"))  # after the last row: an empty part
  manifest = writer.close(MANIFEST)
  assert manifest["count"] == 6 and manifest["n_skipped"] == 2
  assert manifest["skipped"] == [
    dict(source="bad.png", error="not an image"),
    dict(source="last.png", error="truncated"),
  ]
  assert len(export.read_export(out).ids) == 6


def test_not_an_export(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a finished export"):
    export.read_export(str(tmp_path))


# ---- End to end with a tiny trained work dir (tests/conftest.py `trained_workdir`).


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  from PIL import Image

  folder = tmp_path_factory.mktemp("xrays")
  rng = np.random.default_rng(5)
  for i in range(5):
    sub = folder / ("a" if i < 3 else "b")
    sub.mkdir(exist_ok=True)
    pixels = (rng.random((40 + 3 * i, 36)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(sub / f"x{i}.png")
  (folder / "a" / "broken.png").write_bytes(b"not a png at all")
  return str(folder)


def test_folder_export_equals_encode_and_counts_bad_files(trained_workdir, image_folder, tmp_path):
  from jimte.image_files import BadImageError
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(trained_workdir)
  out = str(tmp_path / "exp")
  manifest = export.export_folder(model, image_folder, out, regions=True, part_size=2, batch_size=2)
  good = ["a/x0.png", "a/x1.png", "a/x2.png", "b/x3.png", "b/x4.png"]
  assert manifest["count"] == 5 and manifest["n_skipped"] == 1
  assert manifest["skipped"][0]["source"] == "a/broken.png"
  assert manifest["config_hash"] == model.config_hash and manifest["step"] == model.step
  assert manifest["dim"] == model.embed_dim and manifest["kind"] == "image"
  back = export.read_export(out, columns=("regions",))
  assert back.ids == good
  want = model.encode_images([os.path.join(image_folder, p) for p in good], regions=True)
  np.testing.assert_allclose(back.embeddings, want.embeddings, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(back.extra["regions"], want.regions, rtol=1e-5, atol=1e-6)
  # interrupted after one part, then resumed: the same parts as the uninterrupted export
  cut = str(tmp_path / "cut")
  assert (
    export.export_folder(
      model, image_folder, cut, part_size=2, batch_size=2, regions=True, stop_after_parts=1
    )
    is None
  )
  resumed = export.export_folder(model, image_folder, cut, part_size=2, batch_size=2, regions=True)
  assert resumed["skipped"] == manifest["skipped"]
  for x, y in zip(part_contents(out), part_contents(cut), strict=True):
    assert x.equals(y)
  with pytest.raises(BadImageError, match="broken.png"):
    export.export_folder(model, image_folder, str(tmp_path / "strict"), strict=True)
  assert not [p for p in os.listdir(tmp_path / "strict") if p.endswith(".parquet")]


def test_csv_export_equals_encode_reports(trained_workdir, tmp_path):
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(trained_workdir)
  texts = ["no acute findings.", "small left pleural effusion.", "cardiomegaly."]
  csv_path = tmp_path / "reports.csv"
  csv_path.write_text("study,text\n" + "".join(f"s{i},{t}\n" for i, t in enumerate(texts)))
  out = str(tmp_path / "exp")
  with pytest.raises(KeyError, match="'report'"):
    export.export_csv(model, str(csv_path), out, id_column="study")
  manifest = export.export_csv(
    model, str(csv_path), out, id_column="study", text_column="text", words=True
  )
  assert manifest["kind"] == "text" and manifest["count"] == 3
  back = export.read_export(out, columns=("words", "word_mask"))
  want = model.encode_reports(texts, words=True)
  assert back.ids == ["s0", "s1", "s2"] and back.reports == texts
  np.testing.assert_allclose(back.embeddings, want.embeddings, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(back.extra["word_mask"], want.word_mask)


@pytest.fixture(scope="module")
def synthetic_small(tmp_path_factory):
  """The synthetic_cxr `small` config built into a tmp TFDS data dir (200/50/50 at 64 px)."""
  from data_pipeline.builders.synthetic_cxr import Builder

  data_dir = tmp_path_factory.mktemp("tfds")
  Builder(data_dir=str(data_dir), config="small").download_and_prepare()
  return str(data_dir)


def test_tfds_export_equals_eval_pipeline_resumes_and_shards(trained_workdir, synthetic_small):
  """Image rows of a TFDS split: ids are its study ids in stored order, embeddings equal those of
  the eval pipeline's batches (classify.eval_images), reports attached; an interrupted export
  resumes to the same parts; two hosts' shards read back as the one-host export."""
  from data_pipeline.labels import ReportLabeler
  from jimte import classify
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(trained_workdir)
  directory = export.tfds_directory("synthetic_cxr/small", synthetic_small)
  split = classify.tfds_split(directory, "test", labeler=ReportLabeler())
  examples = list(split.source.as_dataset().as_numpy_iterator())
  study_ids = [e["study_id"].decode() for e in examples]
  texts = [e["text"].decode() for e in examples]
  base = os.path.dirname(synthetic_small)
  full = os.path.join(base, "tfds_full")
  manifest = export.export_tfds(model, directory, "test", full, part_size=16, batch_size=12)
  assert manifest["count"] == 50 and manifest["kind"] == "image" and len(manifest["parts"]) == 4
  back = export.read_export(full)
  assert back.ids == study_ids and back.reports == texts
  want = np.concatenate(
    [
      model.encode_image_arrays(b).embeddings
      for b in classify.eval_images(split, model.tokenizer, model.image_size)
    ]
  )
  np.testing.assert_allclose(back.embeddings, want, rtol=1e-5, atol=1e-6)

  cut = os.path.join(base, "tfds_cut")
  kw = dict(part_size=16, batch_size=12)
  assert export.export_tfds(model, directory, "test", cut, stop_after_parts=2, **kw) is None
  assert len(part_contents(cut)) == 2
  export.export_tfds(model, directory, "test", cut, **kw)
  for x, y in zip(part_contents(full), part_contents(cut), strict=True):
    assert x.equals(y)

  hosts = os.path.join(base, "tfds_hosts")
  assert (
    export.export_tfds(model, directory, "test", hosts, process_index=1, process_count=2, **kw)
    is None
  )
  shards = export.export_tfds(
    model, directory, "test", hosts, process_index=0, process_count=2, **kw
  )
  assert shards["process_count"] == 2 and {p[:9] for p in shards["parts"]} == {
    "part-p000",
    "part-p001",
  }
  both = export.read_export(hosts)
  assert both.ids == study_ids
  np.testing.assert_allclose(both.embeddings, back.embeddings, rtol=1e-5, atol=1e-6)


def test_tfds_report_export_and_bad_split(trained_workdir, synthetic_small, tmp_path):
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(trained_workdir)
  directory = export.tfds_directory("synthetic_cxr/small", synthetic_small)
  out = str(tmp_path / "reports")
  manifest = export.export_tfds(model, directory, "validation", out, kind="text", words=True)
  assert manifest["kind"] == "text" and manifest["count"] == 50
  back = export.read_export(out, columns=("word_mask",))
  want = model.encode_reports(back.reports, words=True)
  np.testing.assert_allclose(back.embeddings, want.embeddings, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(back.extra["word_mask"], want.word_mask)
  with pytest.raises(KeyError, match="no split 'tset'"):
    export.export_tfds(model, directory, "tset", str(tmp_path / "bad"))
  with pytest.raises(FileNotFoundError, match="no built TFDS dataset"):
    export.tfds_directory("synthetic_cxr/large", synthetic_small)


def test_tfds_row_ids():
  assert export.tfds_row_id(dict(study_id=b"s12", index=3)) == "s12"
  assert export.tfds_row_id(dict(study_id=b"", dicom_id=b"d7", index=3)) == "d7"
  assert export.tfds_row_id(dict(index=np.int64(3))) == "3"


def test_tfds_image_export_with_anatomy_pools_the_splits_own_region_boxes(
  trained_workdir, synthetic_small, tmp_path
):
  """ALC-ITR's image side of a TFDS split: each row's 29 region embeddings are those of its
  stored image pooled in its own `region_boxes` (the synthetic set has them), as
  `JimteModel.encode_anatomy` gives them; the manifest says which boxes were used."""
  import tensorflow as tf

  from data_pipeline.input import TfdsSource
  from jimte.anatomy.regions import default_atlas
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(trained_workdir)
  directory = export.tfds_directory("synthetic_cxr/small", synthetic_small)
  out = str(tmp_path / "anatomy")
  manifest = export.export_tfds(model, directory, "test", out, anatomy=True, batch_size=16)
  assert manifest["count"] == 50 and manifest["anatomy_boxes"] == "region_boxes"
  back = export.read_export(out, columns=("anatomy",))
  assert back.extra["anatomy"].shape == (50, 29, model.embed_dim)
  examples = list(TfdsSource(directory, "test").as_dataset().take(3).as_numpy_iterator())
  for row, example in enumerate(examples):
    image = tf.io.decode_png(example["image"], channels=1).numpy()
    want, _ = model.encode_anatomy(image, example["region_boxes"])
    np.testing.assert_allclose(back.extra["anatomy"][row], want, rtol=1e-5, atol=1e-6)
    atlas, _ = model.encode_anatomy(image, default_atlas())
    assert not np.allclose(want, atlas, atol=1e-3)  # its own boxes, not the atlas's
