"""The inference API on a tiny trained work dir (tests/conftest.py:trained_workdir)."""

import json
import shutil

import jax
import numpy as np
import pytest

from jimte.evaluate.encode import make_encode_fn
from jimte.inference import Geometry, JimteModel, buckets


@pytest.fixture(scope="module")
def model(trained_workdir):
  return JimteModel.from_workdir(trained_workdir)


def _images(n, height=70, width=90, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.random((height, width)).astype(np.float32) for _ in range(n)]


def test_loads_config_tokenizer_and_step(model, trained_workdir):
  assert model.step == 4 and len(model.config_hash) == 16
  assert (
    model.image_size == model.config.image_size and model.embed_dim == model.config.model.embed_dim
  )
  assert model.tokenizer.vocab_size == model.model_config.text.vocab_size


def test_encodings_are_normalised_and_equal_the_training_eval_encode(model):
  images = np.stack([model.preprocess(x)[0] for x in _images(3)])
  texts = ["small left pleural effusion.", "no acute findings", "right upper lobe nodule"]
  img = model.encode_image_arrays(images, regions=True)
  txt = model.encode_reports(texts, words=True)
  ref = jax.device_get(make_encode_fn(model.module)(model.variables, images, txt.tokens))

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  np.testing.assert_allclose(np.linalg.norm(img.embeddings, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(img.embeddings, unit(ref["image_global"]), atol=1e-5)
  np.testing.assert_allclose(img.regions, unit(ref["regions"]), atol=1e-5)
  np.testing.assert_allclose(txt.embeddings, unit(ref["sentence"]), atol=1e-5)
  np.testing.assert_array_equal(txt.word_mask, ref["word_mask"])
  m = txt.word_mask
  np.testing.assert_allclose(txt.words[m], unit(ref["words"])[m], atol=1e-5)
  sims = model.similarity(_images(3), texts)
  np.testing.assert_allclose(sims, img.embeddings @ txt.embeddings.T, atol=1e-5)


def test_one_compilation_per_bucket(trained_workdir):
  fresh = JimteModel.from_workdir(trained_workdir)
  assert buckets(11, 4) == [(0, 4), (4, 4), (8, 4)] and buckets(3, 8) == [(0, 4)]
  for n in (3, 4, 7, 2, 5):  # buckets 4, 4, 4+4, 2, 4+1
    fresh.encode_images(_images(n, seed=n), batch_size=4)
  assert fresh.compile_counts()["image"] == 3  # sizes 4, 2, 1
  a = fresh.encode_images(_images(5), batch_size=4).embeddings
  b = np.concatenate([fresh.encode_images([x], batch_size=4).embeddings for x in _images(5)])
  np.testing.assert_allclose(a, b, atol=1e-5)  # padding rows change nothing
  assert fresh.compile_counts()["image"] == 3


def test_geometry_maps_a_bright_spot_back_to_where_it_is():
  """A landscape image is centre-cropped: a spot on the model grid lands on its original pixel."""
  geometry = Geometry(height=90, width=150, top=0, left=30, side=90, size=9)
  grid = np.zeros((9, 9))
  grid[2, 7] = 1.0  # cell centre (2.5, 7.5) of 9 -> original (25, 30 + 75)
  back = geometry.to_original(grid)
  assert back.shape == (90, 150)
  assert np.unravel_index(np.argmax(back), back.shape) in {
    (r, c) for r in (24, 25) for c in (104, 105)
  }
  assert geometry.to_input(25, 105) == (2.5, 7.5)


def test_preprocess_geometry_is_exact_on_a_synthetic_image(model):
  """A bright spot in a portrait image: its place in the model input, mapped back, is the spot."""
  pixels = np.zeros((200, 120), np.float32)
  pixels[118:124, 40:46] = 1.0  # centre (121, 43)
  view, geometry = model.preprocess(pixels)
  assert (geometry.top, geometry.left, geometry.side) == (40, 0, 120)
  back = geometry.to_original(view[..., 0])
  row, col = np.unravel_index(np.argmax(back), back.shape)
  assert abs(row - 120.5) <= 3 and abs(col - 42.5) <= 3
  s = model.image_size
  r_in, c_in = geometry.to_input(121, 43)
  peak = np.unravel_index(np.argmax(view[..., 0]), (s, s))
  assert abs(peak[0] - r_in) <= 1.5 and abs(peak[1] - c_in) <= 1.5


def test_similarity_map_is_in_original_pixels_over_the_words(model):
  image = _images(1, height=60, width=100)[0]
  out = model.similarity_map(image, "small left pleural effusion")
  assert out.map.shape == (60, 100) and out.word_maps.shape == (len(out.words), 60, 100)
  assert "</s>" not in out.words and "".join(out.words).replace("\u2581", " ").strip() == (
    "small left pleural effusion"
  )
  assert np.all(np.abs(out.word_maps) <= 1.0 + 1e-5)


def test_bad_inputs_are_clear_errors(model, trained_workdir, tmp_path):
  with pytest.raises(ValueError, match="text 1 is empty"):
    model.encode_reports(["effusion", "  "])
  with pytest.raises(TypeError, match="sequence"):
    model.encode_reports("effusion")
  with pytest.raises(ValueError, match="must be"):
    model.encode_image_arrays(np.zeros((1, 5, 5, 1), np.float32))
  other = tmp_path / "other"
  shutil.copytree(trained_workdir, other)
  config = json.loads((other / "config.json").read_text())
  config["model"]["embed_dim"] *= 2
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="does not match its config"):
    JimteModel.from_workdir(str(other))
  with pytest.raises(FileNotFoundError, match="config.json"):
    JimteModel.from_workdir(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("height,width,size", [(50, 40, 32), (20, 45, 32), (33, 31, 32)])
def test_native_crop_geometry_is_the_eval_windows_place(height, width, size):
  """Under `original_native`, a model-input pixel is the original pixel the geometry names (or the
  padding where the window passes the edge): the window's start is torchvision's CenterCrop's."""
  import tensorflow as tf

  from data_pipeline.input.preprocess import eval_view
  from jimte.inference import _native_window_start

  levels = (np.arange(height * width) % 251 + 1).reshape(height, width, 1).astype(np.uint8)
  view = eval_view(tf.constant(levels), size, native_crop=True).numpy()[..., 0]
  top, left = _native_window_start(height, size), _native_window_start(width, size)
  geometry = Geometry(height, width, top, left, size, size)
  for r in range(size):
    for c in range(size):
      o_r, o_c = r + top, c + left  # the original pixel under input pixel (r, c)
      assert geometry.to_input(o_r, o_c) == (r, c)
      inside = 0 <= o_r < height and 0 <= o_c < width
      expected = levels[o_r, o_c, 0] / 255.0 if inside else 0.0
      assert view[r, c] == pytest.approx(expected, abs=1e-6), (r, c)


# ------------------------------------------------------------------------------------- heatmaps
def test_phrase_maps_are_the_grounding_evaluators_maps_in_original_pixels(model):
  """The inference API's phrase maps equal those the grounding metrics score, placed back on the
  original (landscape) image through the geometry."""
  import tensorflow as tf  # noqa: F401  (the eval view runs in TF)

  from jimte.evaluate import grounding

  text = "Small left pleural effusion. The heart is enlarged."
  image = _images(1, height=60, width=100)[0]
  out = model.phrase_maps(image, text, [("pleural effusion", 11), ("enlarged", 42)])
  assert out.phrases == ["pleural effusion", "enlarged"]
  assert out.attention.shape == out.similarity.shape == (2, 60, 100)
  view, geometry = model.preprocess(image)
  tokens = model.tokenizer.encode([text])
  encoded = jax.device_get(make_encode_fn(model.module)(model.variables, view[None], tokens))
  encoded.update(index=np.arange(1), tokens=tokens)
  words = grounding.report_words(
    [model.tokenizer.id_to_piece(int(t)) for t in tokens[0, 1:]], encoded["word_mask"][0]
  )
  phrases = [
    grounding.Phrase(0, "x", term, grounding.phrase_slots(words, text, term, start), ())
    for term, start in (("pleural effusion", 11), ("enlarged", 42))
  ]
  grids = grounding.phrase_maps(encoded, phrases, float(model.config.loss.gamma1))
  assert out.grid == grids["attention"].shape[-2:]
  for kind in ("attention", "similarity"):
    np.testing.assert_allclose(
      getattr(out, kind), geometry.to_original(grids[kind]), rtol=1e-4, atol=1e-6
    )
  with pytest.raises(ValueError, match="'pneumothorax' at character 0 is not in the tokenised"):
    model.phrase_maps(image, text, [("pneumothorax", 0)])


def test_heatmap_phrases_are_the_reports_findings_or_the_named_ones():
  from data_pipeline.labels import ReportLabeler
  from jimte.evaluate import heatmaps

  text = "No pneumothorax. Small left pleural effusion. Possible right lower lobe atelectasis."
  found = heatmaps.finding_phrases(text, labeler=ReportLabeler())
  words = " ".join(p.lower() for p, _ in found)
  assert "effusion" in words and "atelectasis" in words and "pneumothorax" not in words
  for phrase, start in found:
    assert text[start : start + len(phrase)] == phrase
  assert heatmaps.named_phrases(text, ["LEFT pleural"]) == [("left pleural", 23)]
  with pytest.raises(ValueError, match="'nodule' does not occur"):
    heatmaps.named_phrases(text, ["nodule"])


def test_jimte_heatmap_writes_a_png_and_names_bad_input(trained_workdir, tmp_path, capsys):
  from PIL import Image

  from jimte import cli

  image = (np.random.default_rng(0).random((80, 120)) * 255).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / "case.png")
  out = tmp_path / "fig.png"
  text = "Small left pleural effusion. Moderate cardiomegaly."
  argv = ["heatmap", "--workdir", trained_workdir, "--image", str(tmp_path / "case.png")]
  assert cli.main([*argv, "--text", text, "--out", str(out)]) == 0
  with Image.open(out) as png:
    assert png.format == "PNG" and png.size[0] > 300
  assert cli.main([*argv, "--text", text, "--phrase", "nodule", "--out", str(out)]) == 2
  assert "'nodule' does not occur in the report" in capsys.readouterr().err
  (tmp_path / "empty.txt").write_text("  ")
  assert cli.main([*argv, "--report-file", str(tmp_path / "empty.txt"), "--out", str(out)]) == 2
  assert "the report text is empty" in capsys.readouterr().err
  from jimte.evaluate import heatmaps
  from jimte.inference import JimteModel

  paths = heatmaps.write_heatmaps(
    JimteModel.from_workdir(trained_workdir),
    [str(tmp_path / "case.png")] * 2,
    [text, "No acute cardiopulmonary process."],
    str(tmp_path / "retrieved"),
  )
  assert [p.rsplit("/", 1)[1] for p in paths] == ["heatmap-000.png", "heatmap-001.png"]
