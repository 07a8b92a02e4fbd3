"""Tests of the anatomy pieces of ALC-ITR: the atlas and region codes and texts (jimte/anatomy),
box pooling, the model's anatomy head, and the RRA-VL loss against a plain single-device reference
(values and gradients, 8 simulated devices)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import phantoms
from data_pipeline.labels.labeler import ReportLabeler
from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_INDEX, REGION_INDEX
from jimte.anatomy import pooling, regions, table
from jimte.losses import anatomy as anatomy_loss
from launch import multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("true_float32_matmuls")


def bit(name):
  return 1 << CHEXPERT_INDEX[name]


# ----------------------------------------------------------------------------------------------
# Regions: atlas, containment, codes and texts
# ----------------------------------------------------------------------------------------------


def test_default_atlas_is_a_frontal_layout_close_to_the_phantoms_own_boxes():
  atlas = regions.default_atlas()
  assert (
    atlas.shape == (29, 4)
    and np.all(atlas[:, 2] > atlas[:, 0])
    and np.all(atlas[:, 3] > atlas[:, 1])
  )
  right, left = atlas[REGION_INDEX["right lung"]], atlas[REGION_INDEX["left lung"]]
  assert right[3] <= 0.5 <= left[1]  # the patient's right lung on the image's left
  upper = atlas[REGION_INDEX["right upper lung zone"]]
  lower = atlas[REGION_INDEX["right lower lung zone"]]
  assert upper[2] <= lower[0] + 1e-6
  boxes = phantoms.generate_split(20, split="test", seed=3)["region_boxes"]
  ious = []
  for b in boxes:
    inter = np.clip(
      np.minimum(b[:, 2:], atlas[:, 2:]) - np.maximum(b[:, :2], atlas[:, :2]), 0, None
    )
    inter = inter.prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    ious.append(inter / (area(b) + area(atlas) - inter))
  assert np.mean(ious) > 0.5, np.mean(ious)


def test_zone_findings_are_also_findings_of_their_lung():
  codes = regions.codes_from_findings(
    [
      {"chexpert": "Lung Lesion", "region": "left upper lung zone"},
      {"chexpert": "Cardiomegaly", "region": "cardiac silhouette"},
      {"chexpert": "Pleural Effusion", "region": "right costophrenic angle"},
    ]
  )
  assert codes[REGION_INDEX["left upper lung zone"]] == bit("Lung Lesion")
  assert codes[REGION_INDEX["left lung"]] == bit("Lung Lesion")
  assert codes[REGION_INDEX["right lung"]] == bit("Pleural Effusion")
  assert codes[REGION_INDEX["cardiac silhouette"]] == bit("Cardiomegaly")
  assert codes[REGION_INDEX["mediastinum"]] == 0 and codes.sum() == (
    2 * bit("Lung Lesion") + 2 * bit("Pleural Effusion") + bit("Cardiomegaly")
  )


def test_region_texts_and_weak_codes_from_the_labeler():
  report = (
    "There is a small right pleural effusion. 2 cm nodule in the left upper lobe. "
    "No pneumothorax. Heart size is normal."
  )
  result = ReportLabeler().label(report)
  codes = regions.codes_from_labels(result)
  sentences = regions.region_sentences(result)
  nodule = "2 cm nodule in the left upper lobe."
  assert sentences[REGION_INDEX["left upper lung zone"]] == [nodule]
  assert sentences[REGION_INDEX["left lung"]] == [nodule]
  assert codes[REGION_INDEX["left upper lung zone"]] == bit("Lung Lesion")
  assert codes[REGION_INDEX["right lung"]] & bit("Pleural Effusion")
  assert "There is a small right pleural effusion." in sentences[REGION_INDEX["right lung"]]
  assert sentences[REGION_INDEX["cardiac silhouette"]] == []  # a negative mention is no text
  assert codes[REGION_INDEX["cardiac silhouette"]] == 0


def test_unknown_region_name_is_an_error_listing_the_valid_ones():
  assert regions.region_indices(["Left  Lung", "svc"]) == [REGION_INDEX["left lung"], 23]
  with pytest.raises(ValueError, match="left lungs.*right lung, right upper lung zone"):
    regions.region_indices(["left lungs"])


def test_table_rows_join_a_batch_by_index():
  reports = [
    "The lungs are clear.",
    "2 cm nodule in the left upper lobe.",
    "2 cm nodule in the left upper lobe. Moderate cardiomegaly.",
  ]
  boxes = np.full((3, 29, 4), np.nan, np.float32)
  boxes[1, 0] = [0.1, 0.1, 0.5, 0.4]
  t = table.build_table(reports, boxes=boxes)
  assert t.texts[:29] == tuple(regions.normal_sentence(r) for r in CHEST_IMAGENOME_REGIONS)
  luz = REGION_INDEX["left upper lung zone"]
  assert t.text_ids[0, luz] == luz and t.text_ids[1, luz] == t.text_ids[2, luz] >= 29
  assert (
    t.sentences(1, luz) == ["2 cm nodule in the left upper lobe."] and t.sentences(0, luz) == []
  )
  np.testing.assert_array_equal(t.boxes[1, 0], boxes[1, 0])
  np.testing.assert_array_equal(t.boxes[1, 1], regions.default_atlas()[1])  # NaN -> atlas

  class Words:  # the tokenizer interface the table uses: one id per word, BOS 1, EOS 2, PAD 0
    max_len = 8

    def encode(self, texts):
      out = np.zeros((len(texts), self.max_len), np.int32)
      for i, text in enumerate(texts):
        ids = [1] + [3 + len(w) for w in text.split()][: self.max_len - 2] + [2]
        out[i, : len(ids)] = ids
      return out

  t = t.with_tokens(Words(), 8)
  rows = t.batch_rows(np.array([2, -1]))
  assert set(rows) == set(table.BATCH_KEYS)
  assert rows["region_tokens"].shape == (2, 29, 8)
  np.testing.assert_array_equal(rows["region_tokens"][0, luz], t.tokens[t.text_ids[2, luz]])
  np.testing.assert_array_equal(rows["region_codes"][1], t.codes[0])  # padding row: example 0
  with pytest.raises(IndexError, match="3 examples"):
    t.batch_rows(np.array([3]))


# ----------------------------------------------------------------------------------------------
# Pooling inside boxes
# ----------------------------------------------------------------------------------------------


def test_box_cell_weights_are_area_fractions():
  w = np.asarray(pooling.box_cell_weights(jnp.array([0.0, 0.0, 0.5, 0.25]), 4, 4))
  want = np.zeros((4, 4))
  want[:2, 0] = 0.5
  np.testing.assert_allclose(w, want, atol=1e-7)
  # Half of cell (0, 0) and all of cell (0, 1) in x, a quarter of row 1 in y.
  w = np.asarray(pooling.box_cell_weights(jnp.array([0.25, 0.125, 0.3125, 0.5]), 4, 4))
  want = np.zeros((4, 4))
  want[1, 0], want[1, 1] = 0.5 / 1.5, 1.0 / 1.5
  np.testing.assert_allclose(w, want, atol=1e-6)
  tiny = np.asarray(pooling.box_cell_weights(jnp.array([0.6, 0.6, 0.6, 0.6]), 4, 4))
  assert tiny[2, 2] == 1.0 and tiny.sum() == 1.0  # zero area: the cell holding it


def test_pool_boxes_is_the_weighted_mean_of_the_cells():
  grid = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  boxes = jnp.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]] * 2)
  pooled = np.asarray(pooling.pool_boxes(grid, boxes))
  np.testing.assert_allclose(pooled[:, 0], np.asarray(grid[:, :2, :2]).mean((1, 2)), atol=1e-6)
  np.testing.assert_allclose(pooled[:, 1], np.asarray(grid).mean((1, 2)), atol=1e-6)
  shared = np.asarray(pooling.pool_boxes(grid, boxes[0]))
  np.testing.assert_allclose(shared, pooled, atol=1e-6)


def test_anatomy_head_starts_as_the_pooled_region_features():
  from jimte.models.joimternet import build_model, count_params, init_variables, small_model_config

  config = small_model_config()
  config.text.vocab_size = 50
  plain_variables = init_variables(build_model(config), jax.random.key(0), 64, 16)
  plain_params = plain_variables["params"]
  config.image.anatomy_head = True
  model = build_model(config)
  variables = init_variables(model, jax.random.key(0), 64, 16)
  assert (
    count_params(variables["params"]["image"]) == count_params(plain_params["image"]) + 128 * 129
  )
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1), minval=-1, maxval=1)
  boxes = jnp.broadcast_to(jnp.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]), (2, 2, 4))
  out = model.apply(variables, images, train=False, boxes=boxes, method=model.encode_image)
  h = out.regions.shape[1] // 2
  np.testing.assert_allclose(out.anatomy[:, 0], out.regions[:, :h, :h].mean((1, 2)), atol=1e-5)
  atlas_out = model.apply(variables, images, train=False, method=model.encode_image)
  assert atlas_out.anatomy.shape == (2, 29, 128)
  config.image.anatomy_head = False
  plain = build_model(config)
  with pytest.raises(ValueError, match="without anatomy_head"):
    plain.apply(plain_variables, images, train=False, boxes=boxes, method=plain.encode_image)


# ----------------------------------------------------------------------------------------------
# The RRA-VL loss
# ----------------------------------------------------------------------------------------------


def reference_loss(v, t, ids, codes, valid, scale, same_finding):
  """Row by row, as docs/alc_itr.md writes it (jnp, so it has gradients)."""
  n, slots, _ = v.shape
  sums, rows = {"i2t": 0.0, "t2i": 0.0}, 0
  for r in range(slots):
    vn = v[:, r] / jnp.linalg.norm(v[:, r], axis=-1, keepdims=True)
    tn = t[:, r] / jnp.linalg.norm(t[:, r], axis=-1, keepdims=True)
    s = scale * vn @ tn.T
    cols = np.flatnonzero(valid[:, r])
    for i in range(n):
      if not valid[i, r]:
        continue
      rows += 1
      pos = [j for j in cols if ids[i, r] == ids[j, r]]
      if same_finding:
        pos = [j for j in cols if ids[i, r] == ids[j, r] or codes[i, r] == codes[j, r] != 0]
      for name, row in (("i2t", s[i]), ("t2i", s[:, i])):
        log_p = row[cols] - jax.nn.logsumexp(row[cols])
        picked = [list(cols).index(j) for j in pos]
        sums[name] = sums[name] - jnp.mean(log_p[np.array(picked)])
  return 0.5 * (sums["i2t"] + sums["t2i"]) / rows, {k: x / rows for k, x in sums.items()}


def loss_problem(seed, n=16, slots=3, dim=6):
  rng = np.random.default_rng(seed)
  v = rng.standard_normal((n, slots, dim)).astype(np.float32)
  t = rng.standard_normal((n, slots, dim)).astype(np.float32)
  ids = rng.integers(0, 5, (n, slots)).astype(np.int32)  # repeated texts: several positives
  codes = np.where(ids < 2, 0, rng.integers(1, 3, (n, slots))).astype(np.int32)
  valid = rng.random((n, slots)) > 0.15
  return v, t, ids, codes, valid


def test_rra_vl_loss_hand_computed_two_cases():
  # Two cases, one slot, orthogonal unit vectors: cos(v_i, t_i) = 1, cos(v_i, t_j) = 0, scale 2.
  v = np.eye(2, dtype=np.float32)[:, None, :]
  fn = jax.jit(anatomy_loss.conditioned_objective(jax.make_mesh((1,), ("data",)), scale=2.0))
  loss, _ = fn(v, v, np.array([[0], [1]]), np.zeros((2, 1), np.int32), np.ones((2, 1), bool))
  np.testing.assert_allclose(float(loss), np.log(1 + np.exp(-2.0)), rtol=1e-6)
  # The same text for both: every column is a positive, the loss is log 2 - mean of log-probs' gap.
  loss, _ = fn(v, v, np.array([[0], [0]]), np.zeros((2, 1), np.int32), np.ones((2, 1), bool))
  want = -0.5 * ((2 - np.log(np.exp(2) + 1)) + (0 - np.log(np.exp(2) + 1)))
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)


@pytest.mark.parametrize("positives", anatomy_loss.POSITIVES)
def test_rra_vl_loss_equals_the_reference_with_gradients(positives):
  v, t, ids, codes, valid = loss_problem(0)
  fn = anatomy_loss.conditioned_objective(
    jax.make_mesh((1,), ("data",)), scale=10.0, positives=positives
  )
  same = positives == "same_finding"
  (loss, terms), grads = jax.jit(
    jax.value_and_grad(lambda v, t: fn(v, t, ids, codes, valid), argnums=(0, 1), has_aux=True)
  )(v, t)
  reference = lambda v, t: reference_loss(v, t, ids, codes, valid, 10.0, same)
  (want, want_terms), want_grads = jax.jit(
    jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)
  )(v, t)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  for k in ("i2t", "t2i"):
    np.testing.assert_allclose(float(terms[f"anatomy_{k}"]), float(want_terms[k]), rtol=1e-5)
  for g, w in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.max(jnp.abs(w))))
  assert np.all(np.isfinite(grads[0])) and not np.any(grads[0][~valid])  # invalid rows: no grad


def test_same_finding_positives_change_the_loss():
  v, t, ids, codes, valid = loss_problem(1)
  mesh = jax.make_mesh((1,), ("data",))
  a = jax.jit(anatomy_loss.conditioned_objective(mesh, scale=10.0))(v, t, ids, codes, valid)[0]
  same_finding = anatomy_loss.conditioned_objective(mesh, scale=10.0, positives="same_finding")
  b = jax.jit(same_finding)(v, t, ids, codes, valid)[0]
  assert abs(float(a) - float(b)) > 1e-2
  with pytest.raises(ValueError, match="positives"):
    anatomy_loss.conditioned_objective(mesh, scale=1.0, positives="all")


def test_select_regions_prefers_abnormal_regions_and_is_distinct():
  codes = np.zeros((32, 29), np.int32)
  codes[:, 5] = 1
  counts = np.zeros(29)
  for s in range(200):
    sel = np.asarray(anatomy_loss.select_regions(jax.random.key(s), codes, 4))
    assert len(set(sel)) == 4
    counts[sel] += 1
  assert counts[5] > 150 and counts.sum() == 800  # weight 33 of 61: almost always drawn


def eight_device_anatomy_checks() -> dict:
  """Run in a subprocess with 8 simulated devices: sharded vs single-device, relative errors."""
  assert jax.device_count() == 8, jax.device_count()
  out = {}
  v, t, ids, codes, valid = loss_problem(2, n=32)
  with jax.default_matmul_precision("highest"):
    for positives in anatomy_loss.POSITIVES:
      values = {}
      for name, mesh in (
        ("one", jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])),
        ("eight", jax.make_mesh((4, 2), ("data", "fsdp"))),
      ):
        fn = anatomy_loss.conditioned_objective(mesh, scale=10.0, positives=positives)
        (loss, _), grads = jax.jit(
          jax.value_and_grad(
            lambda v, t, fn=fn: fn(v, t, ids, codes, valid), argnums=(0, 1), has_aux=True
          )
        )(v, t)
        values[name] = (float(loss), [np.asarray(g) for g in grads])
      (a, ga), (b, gb) = values["one"], values["eight"]
      out[positives] = dict(
        loss_rel=abs(a - b) / abs(a),
        grads_rel=max(
          float(np.max(np.abs(x - y)) / np.max(np.abs(x))) for x, y in zip(ga, gb, strict=True)
        ),
      )
  return out


def test_rra_vl_loss_sharded_over_8_devices_equals_single_device():
  env = multiprocess.process_env(8)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  code = (
    "import json; from tests import test_anatomy as t; "
    "print(json.dumps(t.eight_device_anatomy_checks()))"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-6000:]
  results = json.loads(done.stdout.strip().splitlines()[-1])
  for positives, r in results.items():
    assert r["loss_rel"] < 1e-5 and r["grads_rel"] < 1e-5, (positives, r)


# ----------------------------------------------------------------------------------------------
# Location-conditioned retrieval on an encoded split
# ----------------------------------------------------------------------------------------------


def encoded_split(seed=0, n=8, dim=16):
  """Codes with pairs of cases sharing a finding in a region; region vectors that name exactly
  (region, code) and global vectors that are noise."""
  from jimte.evaluate import anatomy_retrieval  # noqa: F401 (imported by the tests below)

  rng = np.random.default_rng(seed)
  codes = np.zeros((n, 29), np.int32)
  codes[[0, 1], REGION_INDEX["left upper lung zone"]] = bit("Lung Lesion")
  codes[[2, 3, 4], REGION_INDEX["right lung"]] = bit("Pleural Effusion")
  codes[5, REGION_INDEX["right lung"]] = bit("Pneumothorax")  # alone: its query is skipped
  table = rng.standard_normal((29, 8, dim))
  anatomy = table[np.arange(29)[None, :], np.minimum(codes, 7)] + 0.01 * rng.standard_normal(
    (n, 29, dim)
  )
  return {
    "image_global": rng.standard_normal((n, dim)),
    "sentence": rng.standard_normal((n, dim)),
    "anatomy": anatomy,
    "region_text": anatomy + 0.01 * rng.standard_normal((n, 29, dim)),
    "region_codes": codes,
  }


def test_conditioned_retrieval_ranks_same_finding_same_region_first():
  from jimte.evaluate import anatomy_retrieval

  results = anatomy_retrieval.evaluate(encoded_split(), k=2, blend=0.0)
  assert results["num_queries"] == 5 and results["skipped/no_relevant"] == 1
  for kind in ("region_text", "region_image", "blend"):  # blend 0: region_text itself
    assert results[f"{kind}/mean_average_precision"] == pytest.approx(1.0), kind
  # P@2: the two lesion queries have one other case each (1/2), the three effusions two (2/2).
  assert results["region_text/precision@2"] == pytest.approx((0.5 * 2 + 1.0 * 3) / 5)
  assert results["global/mean_average_precision"] < 0.9
  # Chance: relevant share of the 7 other cases, (1/7 * 2 + 2/7 * 3) / 5.
  assert results["chance_precision"] == pytest.approx((2 / 7 + 6 / 7) / 5)


def test_conditioned_scores_are_cosines_of_the_queried_region():
  from jimte.evaluate import anatomy_retrieval

  encoded = encoded_split(1)
  scores = anatomy_retrieval.query_scores(encoded, [(2, 0), (0, 9)], blend=0.25)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  want = unit(encoded["region_text"][:, 9]) @ unit(encoded["anatomy"][0, 9])
  np.testing.assert_allclose(scores["region_text"][1], want, rtol=1e-5)
  want = unit(encoded["anatomy"][:, 0]) @ unit(encoded["anatomy"][2, 0])
  np.testing.assert_allclose(scores["region_image"][0], want, rtol=1e-5)
  glob = unit(encoded["sentence"]) @ unit(encoded["image_global"][2])
  np.testing.assert_allclose(scores["global"][0], glob, rtol=1e-5)
  np.testing.assert_allclose(
    scores["blend"], 0.75 * scores["region_text"] + 0.25 * scores["global"], rtol=1e-6
  )
  leaves = anatomy_retrieval.query_set(encoded["region_codes"], "leaves")
  assert {r for _, r in leaves} == {REGION_INDEX["left upper lung zone"]}


def test_absent_region_boxes_of_a_split_take_the_atlas_box():
  """A TFDS-like split whose `region_boxes` have NaN rows (MIMIC-CXR without a scene graph, or a
  region the graph lacks): those rows become the default atlas's, the rest stay the split's."""
  import tensorflow as tf

  from data_pipeline import input as input_lib
  from jimte import data

  boxes = np.tile(np.array([0.1, 0.2, 0.6, 0.7], np.float32), (3, 29, 1))
  boxes[0, 5] = np.nan  # one region absent
  boxes[2] = np.nan  # no scene graph at all
  dataset = tf.data.Dataset.from_tensor_slices(
    {
      "image": np.zeros((3, 8, 8, 1), np.uint8),
      "text": ["a.", "b.", "c."],
      "study_id": ["s0", "s1", "s2"],
      "region_boxes": boxes,
    }
  )
  got = data._region_boxes_of(input_lib.DatasetSource(dataset))
  atlas = regions.default_atlas()
  np.testing.assert_array_equal(got[0, 5], atlas[5])
  np.testing.assert_array_equal(got[2], atlas)
  np.testing.assert_array_equal(got[1], boxes[1])
  np.testing.assert_array_equal(np.delete(got[0], 5, 0), np.delete(boxes[0], 5, 0))
