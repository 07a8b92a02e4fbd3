"""Anatomy exports and `jimte alc-retrieve`: region-text columns equal the model's own encodings of
the labeler's region texts, conditioned scores equal hand-computed cosines (AND, OR, text, blend,
box), the hits carry the matched sentences, and the prompt / heatmaps / errors of the CLI."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline import phantoms
from data_pipeline.labels.labeler import ReportLabeler
from data_pipeline.names import REGION_INDEX
from jimte import alc_retrieve, export
from jimte.anatomy import regions

REPORTS = [
  "2 cm nodule in the left upper lobe. Heart size is normal.",
  "Small right pleural effusion. No pneumothorax.",
  "The lungs are clear. No pleural effusion.",
  "Left upper lobe nodular opacity. Moderate cardiomegaly.",
]


@pytest.fixture(scope="module")
def model(trained_workdir):
  from jimte.inference import JimteModel

  return JimteModel.from_workdir(trained_workdir)


@pytest.fixture(scope="module")
def anatomy_exports(model, tmp_path_factory):
  root = tmp_path_factory.mktemp("alc")
  with open(root / "reports.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "report"])
    writer.writerows([[f"case{i}", r] for i, r in enumerate(REPORTS)])
  images = root / "images"
  images.mkdir()
  generated = phantoms.generate_split(3, split="test", seed=1, config=phantoms.PhantomConfig(64))
  for i, pixels in enumerate(generated["image"]):
    Image.fromarray(pixels[..., 0]).save(images / f"img{i}.png")
  export.export_csv(model, str(root / "reports.csv"), str(root / "text"), anatomy=True)
  export.export_folder(model, str(images), str(root / "image"), anatomy=True)
  return root


def test_report_export_holds_the_region_texts_codes_and_sentences(model, anatomy_exports):
  index = export.read_export(
    str(anatomy_exports / "text"), columns=("region_text", "region_codes", "region_sentences")
  )
  assert index.extra["region_text"].shape == (4, 29, model.embed_dim)
  labeler = ReportLabeler()
  for row, report in enumerate(REPORTS):
    texts, sentences, codes = regions.report_anatomy(report, labeler)
    np.testing.assert_allclose(
      index.extra["region_text"][row], model.encode_region_texts(texts), atol=1e-5
    )
    np.testing.assert_array_equal(index.extra["region_codes"][row], codes)
    assert json.loads(index.extra["region_sentences"][row]) == sentences
  luz = REGION_INDEX["left upper lung zone"]
  assert json.loads(index.extra["region_sentences"][0])[luz] == [
    "2 cm nodule in the left upper lobe."
  ]


def test_conditioned_scores_are_the_cosines_of_the_queried_regions(model, anatomy_exports):
  index = export.read_export(
    str(anatomy_exports / "text"), columns=("region_text", "region_codes", "region_sentences")
  )
  image = str(anatomy_exports / "images" / "img0.png")
  names = ["left upper lung zone", "right lung"]
  ids = regions.region_indices(names)
  query, query_global = model.encode_anatomy(image, regions.default_atlas()[ids])
  per = np.einsum("nkd,kd->nk", index.extra["region_text"][:, ids], query)
  glob = index.embeddings @ query_global
  for mode, blend, want in (
    ("or", 0.0, per.max(1)),
    ("and", 0.0, per.mean(1)),
    ("and", 0.25, 0.75 * per.mean(1) + 0.25 * glob),
  ):
    hits, got_names = alc_retrieve.retrieve(
      model, index, image, region_names=names, mode=mode, blend=blend, k=4
    )
    assert got_names == names
    order = np.argsort(-want, kind="stable")
    assert [h.id for h in hits] == [index.ids[r] for r in order]
    np.testing.assert_allclose([h.score for h in hits], want[order], rtol=1e-5, atol=1e-6)
  top = {h.id: h for h in hits}["case0"]
  assert top.region_sentences["left upper lung zone"] == ["2 cm nodule in the left upper lobe."]
  assert top.findings["left upper lung zone"] == ["Lung Lesion"]
  assert top.findings["right lung"] == [] and top.region_sentences["right lung"] == []
  # A query text: each region's score is the mean with the text's cosine to the case's region text.
  text = model.encode_region_texts(["nodule"])[0]
  with_text = 0.5 * (per + np.einsum("nkd,d->nk", index.extra["region_text"][:, ids], text))
  hits, _ = alc_retrieve.retrieve(model, index, image, region_names=names, text="nodule", k=4)
  np.testing.assert_allclose(
    sorted([h.score for h in hits], reverse=True), np.sort(with_text.max(1))[::-1], rtol=1e-5
  )


def test_a_box_is_scored_on_the_atlas_region_it_overlaps_most(model, anatomy_exports):
  atlas = regions.default_atlas()
  luz = REGION_INDEX["left upper lung zone"]
  assert alc_retrieve.box_region(atlas[luz]) == luz
  index = export.read_export(str(anatomy_exports / "image"), columns=("anatomy",))
  assert index.extra["anatomy"].shape == (3, 29, model.embed_dim)
  image = str(anatomy_exports / "images" / "img1.png")
  box = np.array([0.2, 0.6, 0.35, 0.8], np.float32)
  hits, names = alc_retrieve.retrieve(model, index, image, box=box, k=3)
  query, _ = model.encode_anatomy(image, box[None])
  want = index.extra["anatomy"][:, alc_retrieve.box_region(box)] @ query[0]
  assert names == ["left upper lung zone"]
  np.testing.assert_allclose(sorted(h.score for h in hits), np.sort(want), rtol=1e-5)
  assert hits[0].id == "img1.png"  # image -> image: the query's own file first
  with pytest.raises(ValueError, match="--box"):
    alc_retrieve.parse_box("0.5,0.5,0.4,0.9")


def test_cli_writes_the_prompt_and_heatmaps_and_refuses_plain_exports(
  model, trained_workdir, anatomy_exports, tmp_path, capsys
):
  image = str(anatomy_exports / "images" / "img2.png")
  prompt = tmp_path / "prompt.txt"
  args = ["--workdir", trained_workdir, "--index", str(anatomy_exports / "text"), "--image", image]
  rc = alc_retrieve.main(
    [
      *args,
      "--regions",
      "left upper lung zone",
      "--k",
      "2",
      "--json",
      "--prompt",
      str(prompt),
      "--heatmaps",
      str(tmp_path / "maps"),
    ]
  )
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  assert out["regions"] == ["left upper lung zone"] and len(out["hits"]) == 2
  text = prompt.read_text()
  for hit in out["hits"]:
    assert hit["id"] in text
    for sentence in hit["region_sentences"]["left upper lung zone"]:
      assert sentence in text
  assert "left upper lung zone" in text and "uncertain" in text.lower()
  assert len(os.listdir(tmp_path / "maps")) == 2
  assert alc_retrieve.main([*args, "--regions", "left lungs"]) == 2
  assert "unknown region 'left lungs'" in capsys.readouterr().err
  plain = tmp_path / "plain"
  export.export_csv(model, str(anatomy_exports / "reports.csv"), str(plain))
  plain_args = [*args[:2], "--index", str(plain), "--image", image, "--regions", "svc"]
  assert alc_retrieve.main(plain_args) == 2
  assert "export it with --anatomy" in capsys.readouterr().err
