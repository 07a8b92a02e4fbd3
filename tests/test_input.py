"""Tests for data_pipeline.input: batch contract, determinism, resume, augmentation, MLM, per-host
reads."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import input as inp
from data_pipeline import tokenizer as tok

REPO = Path(__file__).resolve().parents[1]
WORDS = [
  "the",
  "heart",
  "size",
  "is",
  "normal",
  "lungs",
  "are",
  "clear",
  "no",
  "pleural",
  "effusion",
  "or",
  "pneumothorax",
  "mild",
  "cardiomegaly",
  "left",
  "lower",
  "lobe",
  "opacity",
  "consistent",
  "with",
  "atelectasis",
  "right",
  "upper",
  "XXXX",
  "stable",
  "granuloma",
  "degenerative",
  "changes",
  "of",
  "the",
  "thoracic",
  "spine",
  "small",
  "nodule",
  "mediastinal",
  "contours",
  "within",
  "limits",
]
IMAGE_SIZE = 32
MAX_LEN = 48
KEYS = {"image", "tokens", "study_index", "index", "valid"}
MLM_KEYS = {"mlm_tokens", "mlm_targets", "mlm_weights"}


def make_texts(count: int, seed: int, min_words: int = 4, max_words: int = 40) -> list[str]:
  rng = np.random.default_rng(seed)
  return [
    " ".join(rng.choice(WORDS, rng.integers(min_words, max_words + 1))) + "." for _ in range(count)
  ]


def make_arrays(count: int, seed: int = 0, height: int = 56, width: int = 48):
  """Random uint8 images, report-like texts, and study ids shared by consecutive pairs of images."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, height, width, 1), dtype=np.uint8)
  return images, make_texts(count, seed), [f"study-{i // 2}" for i in range(count)]


@pytest.fixture(scope="module")
def tokenizer() -> tok.Tokenizer:
  return tok.Tokenizer.train(
    make_texts(400, seed=123), max_len=MAX_LEN, vocab_size=400, num_threads=1
  )


@pytest.fixture(scope="module")
def source() -> inp.ArraySource:
  images, texts, study_ids = make_arrays(40)
  return inp.ArraySource("toy", images=images, texts=texts, study_ids=study_ids)


def dataset_of(count: int, seed: int = 0) -> tf.data.Dataset:
  images, texts, study_ids = make_arrays(count, seed)
  return tf.data.Dataset.from_tensor_slices({"image": images, "text": texts, "study_id": study_ids})


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def train(source, tokenizer, **kwargs):
  defaults = dict(tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=8, seed=0)
  return inp.make_train_iterator(source, **{**defaults, **kwargs})


# --- batch contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("mlm", [False, True])
def test_train_batch_follows_contract(source, tokenizer, mlm):
  batch = next(train(source, tokenizer, mlm=mlm, batch_size=16))
  assert set(batch) == (KEYS | MLM_KEYS if mlm else KEYS)
  expected = {
    "image": (np.float32, (16, IMAGE_SIZE, IMAGE_SIZE, 1)),
    "tokens": (np.int32, (16, MAX_LEN)),
    "study_index": (np.int32, (16,)),
    "index": (np.int32, (16,)),
    "valid": (np.bool_, (16,)),
    "mlm_tokens": (np.int32, (16, MAX_LEN)),
    "mlm_targets": (np.int32, (16, MAX_LEN)),
    "mlm_weights": (np.float32, (16, MAX_LEN)),
  }
  for key, value in batch.items():
    assert (value.dtype, value.shape) == expected[key], key
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["image"].std() > 0.1  # Real content, not a constant.
  assert batch["valid"].all()
  assert (
    len(set(batch["index"].tolist())) == 16
    and batch["index"].min() >= 0
    and batch["index"].max() < 40
  )

  tokens = batch["tokens"]
  assert (tokens[:, 0] == tok.BOS_ID).all()
  for row in tokens:
    (eos,) = np.flatnonzero(row == tok.EOS_ID)
    assert (row[1:eos] >= tok.FIRST_ORDINARY_ID).all() and (row[eos + 1 :] == tok.PAD_ID).all()
  # Tokens are the tokenizer's encoding of the example's own text.
  texts = [source_texts(source)[i] for i in batch["index"]]
  np.testing.assert_array_equal(tokens, tokenizer.encode(texts))


def source_texts(source: inp.ArraySource) -> list[str]:
  return [t.decode() for t in source._texts.numpy()]


def test_study_index_is_a_stable_hash_shared_by_one_study(tokenizer):
  images, texts, _ = make_arrays(6)
  study_ids = ["a", "a", "b", "c", "c", "c"]
  src = inp.ArraySource("s", images=images, texts=texts, study_ids=study_ids)
  batch = next(
    iter(inp.make_eval_batches(src, tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=6))
  )
  by_index = dict(zip(batch["index"].tolist(), batch["study_index"].tolist(), strict=True))
  assert by_index[0] == by_index[1] and by_index[3] == by_index[4] == by_index[5]
  assert len({by_index[0], by_index[2], by_index[3]}) == 3
  assert all(0 <= v < 2**31 - 1 for v in by_index.values())
  # FarmHash fingerprint: the value is the same on every host, run and TF version.
  expected = tf.strings.to_hash_bucket_fast(["a"], 2**31 - 1).numpy()[0]
  assert by_index[0] == expected == inp.study_index(tf.constant("a")).numpy()


# --- determinism and resume -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_same_seed_same_batches_different_seed_different(source, tokenizer, kind):
  src = source if kind == "array" else dataset_of(40)
  first = take(train(src, tokenizer, seed=7, mlm=True), 3)
  again = take(train(src, tokenizer, seed=7, mlm=True), 3)
  other = take(train(src, tokenizer, seed=8, mlm=True), 3)
  assert_batches_equal(first, again)
  assert not np.array_equal(first[0]["index"], other[0]["index"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_batches_do_not_depend_on_parallelism(source, tokenizer):
  dataset = inp.make_train_dataset(
    source, tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=8, seed=4, mlm=True
  )
  serial = tf.data.Options()
  serial.threading.private_threadpool_size = 1
  serial.autotune.enabled = False
  parallel = take(dataset.as_numpy_iterator(), 3)
  assert_batches_equal(parallel, take(dataset.with_options(serial).as_numpy_iterator(), 3))


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_each_epoch_is_a_new_permutation_of_the_host_share(tokenizer, kind):
  images, texts, study_ids = make_arrays(24)
  src = (
    inp.ArraySource("t", images=images, texts=texts, study_ids=study_ids)
    if kind == "array"
    else dataset_of(24)
  )
  batches = take(
    train(src, tokenizer, batch_size=8, augment=False, process_index=1, process_count=2), 6
  )
  indices = np.concatenate([b["index"] for b in batches])
  share = list(range(1, 24, 2))
  epochs = indices.reshape(4, 12)
  for epoch in epochs:
    assert sorted(epoch.tolist()) == share
  assert len({tuple(e) for e in epochs}) == 4, "every epoch should be shuffled differently"


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_start_step_resumes_exactly(tokenizer, kind):
  # 20 examples, batch 6: steps 3..6 cross the epoch boundaries at positions 20 and 40.
  images, texts, study_ids = make_arrays(20)
  src = (
    inp.ArraySource("t", images=images, texts=texts, study_ids=study_ids)
    if kind == "array"
    else dataset_of(20)
  )
  full = take(train(src, tokenizer, batch_size=6, mlm=True, seed=3), 7)
  resumed = take(train(src, tokenizer, batch_size=6, mlm=True, seed=3, start_step=3), 4)
  assert_batches_equal(full[3:], resumed)


def test_sources_of_the_same_data_agree(tokenizer):
  """Arrays, a generator and ragged (per-image) arrays are the same random-access data."""
  images, texts, study_ids = make_arrays(16)
  sources = [
    inp.ArraySource("a", images=images, texts=texts, study_ids=study_ids),
    inp.ArraySource("b", images=list(images), texts=texts, study_ids=study_ids),
    inp.GeneratorSource(
      "c", 16, lambda i: {"image": images[i], "text": texts[i], "study_id": study_ids[i]}
    ),
  ]
  batches = [take(train(s, tokenizer, mlm=True, seed=5), 3) for s in sources]
  assert_batches_equal(batches[0], batches[1])
  assert_batches_equal(batches[0], batches[2])


# --- images ---------------------------------------------------------------------------------------


def test_without_augmentation_image_is_resized_and_scaled(source, tokenizer):
  batch = next(train(source, tokenizer, augment=False))
  originals = source._images.numpy()[batch["index"]]
  expected = tf.image.resize(originals.astype(np.float32) / 255.0, [IMAGE_SIZE] * 2, antialias=True)
  expected = np.clip(expected.numpy(), 0, 1) * 2 - 1
  np.testing.assert_allclose(batch["image"], expected, atol=1e-5)


def test_augmentation_changes_images_and_keeps_range(tokenizer):
  # A smooth image (a gradient with a bright disc) so augmentation differences are not noise.
  yy, xx = np.mgrid[:64, :64]
  image = (xx * 2 + ((yy - 30) ** 2 + (xx - 34) ** 2 < 200) * 100).astype(np.uint8)[..., None]
  src = inp.ArraySource(
    "smooth", images=np.repeat(image[None], 16, axis=0), texts=make_texts(16, 1)
  )
  plain = next(train(src, tokenizer, batch_size=16, augment=False))["image"]
  augmented = next(train(src, tokenizer, batch_size=16))["image"]
  assert augmented.min() >= -1 and augmented.max() <= 1
  assert np.allclose(plain, plain[0]), "without augmentation all copies are identical"
  differences = np.abs(augmented - plain).mean(axis=(1, 2, 3))
  assert (differences > 0.01).all()
  assert len({round(float(d), 6) for d in differences}) == 16, "each copy is augmented differently"
  # Rotation fills some corners with black (-1); the unaugmented gradient never reaches -1 there.
  assert (augmented[:, [0, 0, -1, -1], [0, -1, 0, -1]] == -1).any()


def test_augmentation_components_can_be_switched_off(tokenizer):
  images, texts, _ = make_arrays(8)
  src = inp.ArraySource("t", images=images, texts=texts)
  identity = inp.Augmentation(
    max_rotation_degrees=0,
    crop_area_range=(1.0, 1.0),
    crop_aspect_ratio_range=(48 / 56, 48 / 56),
    max_brightness_delta=0,
    contrast_range=(1.0, 1.0),
  )
  plain = next(train(src, tokenizer, augment=False))
  neutral = next(train(src, tokenizer, augment=identity))
  np.testing.assert_allclose(neutral["image"], plain["image"], atol=1e-5)


def test_rotate_by_quarter_turn_matches_numpy():
  image = np.random.default_rng(0).random((9, 9, 1)).astype(np.float32)
  rotated = inp.rotate(tf.constant(image), tf.constant(math.pi / 2)).numpy()
  candidates = [np.rot90(image, k, axes=(0, 1)) for k in (1, 3)]
  assert min(np.abs(rotated - c).max() for c in candidates) < 1e-4


def test_encoded_png_images_are_decoded(tokenizer):
  images, texts, study_ids = make_arrays(8)
  encoded = [tf.io.encode_png(im).numpy() for im in images]
  ds = tf.data.Dataset.from_tensor_slices({"image": encoded, "text": texts, "study_id": study_ids})
  raw = tf.data.Dataset.from_tensor_slices({"image": images, "text": texts, "study_id": study_ids})
  kwargs = dict(tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=8)
  np.testing.assert_array_equal(
    next(iter(inp.make_eval_batches(ds, **kwargs)))["image"],
    next(iter(inp.make_eval_batches(raw, **kwargs)))["image"],
  )


# --- MLM ------------------------------------------------------------------------------------------


def test_mlm_masking_statistics(tokenizer):
  count = 1024
  texts = make_texts(count, seed=9, min_words=8, max_words=40)
  images = np.zeros((count, 8, 8, 1), np.uint8)
  src = inp.ArraySource("mlm", images=images, texts=texts)
  batch = next(train(src, tokenizer, batch_size=count, mlm=True, augment=False))
  tokens, masked, targets, weights = (
    batch[k] for k in ("tokens", "mlm_tokens", "mlm_targets", "mlm_weights")
  )
  selected = weights == 1.0
  assert set(np.unique(weights)) <= {0.0, 1.0}

  ordinary = tokens >= tok.FIRST_ORDINARY_ID
  assert not (selected & ~ordinary).any(), "PAD/BOS/EOS/special tokens must never be selected"
  rate = selected.sum() / ordinary.sum()
  assert abs(rate - 0.15) < 0.01, rate
  # Per row: round(15% of the ordinary tokens), at least one.
  per_row = np.maximum(1, np.round(0.15 * ordinary.sum(axis=1)))
  np.testing.assert_array_equal(selected.sum(axis=1), per_row)

  np.testing.assert_array_equal(targets, np.where(selected, tokens, 0))
  np.testing.assert_array_equal(masked[~selected], tokens[~selected])
  chosen, original = masked[selected], tokens[selected]
  to_mask = (chosen == tok.MASK_ID).mean()
  unchanged = (chosen == original).mean()
  to_random = 1 - to_mask - unchanged
  n = selected.sum()
  assert n > 3000
  for observed, expected in ((to_mask, 0.8), (to_random, 0.1), (unchanged, 0.1)):
    assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.01, (
      observed,
      expected,
    )
  replaced = chosen[(chosen != tok.MASK_ID) & (chosen != original)]
  assert (replaced >= tok.FIRST_ORDINARY_ID).all() and (replaced < tokenizer.vocab_size).all()


def test_mlm_handles_short_and_empty_texts(tokenizer):
  texts = ["", "heart.", "normal heart", ""]
  src = inp.ArraySource("short", images=np.zeros((4, 8, 8, 1), np.uint8), texts=texts)
  batch = next(
    iter(inp.make_eval_batches(src, tokenizer=tokenizer, image_size=8, batch_size=4, mlm=True))
  )
  ordinary = (batch["tokens"] >= tok.FIRST_ORDINARY_ID).sum(axis=1)
  selected = batch["mlm_weights"].sum(axis=1)
  np.testing.assert_array_equal(selected, np.minimum(ordinary, 1))
  assert ordinary[1] >= 1 and selected[0] == selected[3] == 0


def test_mlm_masking_rates_are_configurable(tokenizer):
  texts = make_texts(256, seed=4, min_words=20, max_words=40)
  src = inp.ArraySource("cfg", images=np.zeros((256, 8, 8, 1), np.uint8), texts=texts)
  all_masked = inp.MlmMasking(select_rate=0.5, mask_fraction=1.0, random_fraction=0.0)
  batch = next(train(src, tokenizer, batch_size=256, mlm=all_masked, augment=False, image_size=8))
  selected = batch["mlm_weights"] == 1
  assert (batch["mlm_tokens"][selected] == tok.MASK_ID).all()
  assert abs(selected.sum() / (batch["tokens"] >= tok.FIRST_ORDINARY_ID).sum() - 0.5) < 0.01
  with pytest.raises(ValueError):
    inp.MlmMasking(mask_fraction=0.95, random_fraction=0.1)


# --- evaluation and per-host shares ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_eval_covers_every_example_once_across_two_hosts(tokenizer, kind):
  count, batch_size = 37, 8
  images, texts, study_ids = make_arrays(count)
  src = (
    inp.ArraySource("e", images=images, texts=texts, study_ids=study_ids)
    if kind == "array"
    else dataset_of(count)
  )
  seen, lengths = [], []
  for host in range(2):
    batches = inp.make_eval_batches(
      src,
      tokenizer=tokenizer,
      image_size=IMAGE_SIZE,
      batch_size=batch_size,
      mlm=True,
      process_index=host,
      process_count=2,
    )
    rows = list(batches)
    lengths.append(len(rows))
    assert len(rows) == batches.num_batches == math.ceil(math.ceil(count / 2) / batch_size)
    assert batches.num_examples == len(range(host, count, 2))
    for batch in rows:
      valid = batch["valid"]
      seen.extend(batch["index"][valid].tolist())
      assert (batch["index"][~valid] == inp.PADDING_INDEX).all()
      assert (batch["study_index"][~valid] == inp.PADDING_INDEX).all()
      assert (batch["mlm_weights"][~valid] == 0).all()
      padding_tokens = batch["tokens"][~valid]
      assert (padding_tokens[:, :2] == [tok.BOS_ID, tok.EOS_ID]).all() and (
        padding_tokens[:, 2:] == 0
      ).all()
      # Evaluation does not augment: each valid image is the plain resize of its source.
      expected = tf.image.resize(
        images[batch["index"][valid]] / 255.0, [IMAGE_SIZE] * 2, antialias=True
      )
      np.testing.assert_allclose(
        batch["image"][valid], np.clip(expected.numpy(), 0, 1) * 2 - 1, atol=1e-5
      )
  assert lengths[0] == lengths[1]
  assert sorted(seen) == list(range(count))


def test_eval_mlm_masks_do_not_depend_on_host_count(tokenizer, source):
  kwargs = dict(tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=40, mlm=True, seed=2)
  one = next(iter(inp.make_eval_batches(source, **kwargs)))
  two = next(iter(inp.make_eval_batches(source, process_index=1, process_count=2, **kwargs)))
  rows = two["index"][two["valid"]]
  np.testing.assert_array_equal(two["mlm_tokens"][two["valid"]], one["mlm_tokens"][rows])


def test_tfds_directory_source(tokenizer, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  count = 11
  images, texts, study_ids = make_arrays(count)
  labels = np.random.default_rng(0).choice([0.0, 1.0, -1.0, np.nan], (count, 14)).astype(np.float32)
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 1)),
      "text": tfds.features.Text(),
      "study_id": tfds.features.Text(),
      "patient_id": tfds.features.Text(),
      "labels": tfds.features.Tensor(shape=(14,), dtype=np.float32),
    }
  )
  examples = [
    (
      i,
      {
        "image": images[i],
        "text": texts[i],
        "study_id": study_ids[i],
        "patient_id": f"p{i}",
        "labels": labels[i],
      },
    )
    for i in range(count)
  ]
  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name="toy_cxr",
    version="1.0.0",
    features=features,
    split_datasets={"test": examples},
    data_dir=str(tmp_path),
    disable_shuffling=True,
  )
  src = inp.TfdsSource(str(builder.data_dir), split="test")
  assert src.num_examples == count
  assert [src.num_host_examples(i, 3) for i in range(3)] == [3, 4, 4]
  seen = []
  for host in range(3):
    batches = inp.make_eval_batches(
      src,
      tokenizer=tokenizer,
      image_size=IMAGE_SIZE,
      batch_size=3,
      process_index=host,
      process_count=3,
      extra_keys=("labels",),
    )
    assert batches.num_batches == 2
    for batch in batches:
      valid = batch["valid"]
      index = batch["index"][valid]
      seen.extend(index.tolist())
      np.testing.assert_array_equal(batch["labels"][valid], labels[index])
      np.testing.assert_array_equal(
        batch["tokens"][valid], tokenizer.encode([texts[i] for i in index])
      )
      # The PNG bytes TFDS stored are decoded after reading: the pixels are the originals.
      expected = tf.image.resize(images[index] / 255.0, [IMAGE_SIZE] * 2, antialias=True)
      np.testing.assert_allclose(
        batch["image"][valid], np.clip(expected.numpy(), 0, 1) * 2 - 1, atol=1e-5
      )
  assert seen == list(range(count)), "contiguous host slices, in stored order"
  first = take(train(src, tokenizer, batch_size=4, mlm=True), 3)
  assert_batches_equal(first, take(train(src, tokenizer, batch_size=4, mlm=True), 3))
  assert_batches_equal(
    first[1:], take(train(src, tokenizer, batch_size=4, mlm=True, start_step=1), 2)
  )


def test_invalid_arguments(source, tokenizer):
  with pytest.raises(ValueError, match="process_index"):
    train(source, tokenizer, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="no examples"):
    inp.make_train_dataset(
      inp.ArraySource("one", images=np.zeros((1, 4, 4, 1), np.uint8), texts=["a"]),
      tokenizer=tokenizer,
      image_size=8,
      batch_size=1,
      seed=0,
      process_index=1,
      process_count=2,
    )
  bad = tf.data.Dataset.from_tensor_slices(
    {"image": np.zeros((2, 4, 4, 1), np.uint8), "text": ["a", "b"]}
  )
  with pytest.raises(ValueError, match="study_id"):
    inp.as_source(bad)
  with pytest.raises(ValueError, match="uint8"):
    inp.ArraySource("f", images=np.zeros((2, 4, 4, 1), np.float32), texts=["a", "b"])


# --- two real processes ---------------------------------------------------------------------------

HOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from data_pipeline import input as inp
    from data_pipeline.tokenizer import Tokenizer
    from tests.test_input import make_arrays, dataset_of

    tokenizer_dir, host, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tokenizer = Tokenizer.load(tokenizer_dir)
    images, texts, study_ids = make_arrays(count)
    array_source = inp.ArraySource("a", images=images, texts=texts, study_ids=study_ids)
    out = {}
    for name, source in (("array", array_source), ("dataset", dataset_of(count))):
        batches = inp.make_eval_batches(source, tokenizer=tokenizer, image_size=16, batch_size=4,
                                        process_index=host, process_count=2)
        out[name] = [int(i) for b in batches for i, v in zip(b["index"], b["valid"]) if v]
        out[name + "_batches"] = batches.num_batches
    train = inp.make_train_iterator(array_source, tokenizer=tokenizer, image_size=16, batch_size=3,
    seed=1,
                                    process_index=host, process_count=2)
    share = array_source.num_host_examples(host, 2)
    out["train_epoch"] = [int(i) for _ in range(share // 3) for i in next(train)["index"]]
    print("RESULT " + json.dumps(out))
""")


def test_two_real_processes_read_disjoint_shares(tokenizer, tmp_path):
  count = 30
  tokenizer.save(tmp_path / "tok")
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
  hosts = [
    subprocess.Popen(
      [sys.executable, "-c", HOST_SCRIPT, str(REPO), str(tmp_path / "tok"), str(host), str(count)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for host in range(2)
  ]
  results = []
  for proc in hosts:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    results.append(json.loads(line[len("RESULT ") :]))
  for name in ("array", "dataset"):
    first, second = set(results[0][name]), set(results[1][name])
    assert len(results[0][name]) == len(first) and len(results[1][name]) == len(second)
    assert not first & second
    assert first | second == set(range(count))
    assert results[0][name + "_batches"] == results[1][name + "_batches"]
  # One training epoch per host (15 examples, 5 batches of 3) is exactly its share.
  epochs = [set(r["train_epoch"]) for r in results]
  assert all(len(e) == 15 for e in epochs) and not epochs[0] & epochs[1]
  assert epochs[0] | epochs[1] == set(range(count))


# --- jimte.batches: host batches to global arrays (JAX side, in subprocesses for the device flags)
#   ---

GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    from jax.sharding import Mesh, PartitionSpec
    sys.path.insert(0, sys.argv[1])
    from jimte.batches import batch_sharding, prefetch_to_mesh, to_global_batch

    assert jax.device_count() == 8, jax.devices()
    devices = np.array(jax.devices())

    def host_batch(rows, step=0):
        rng = np.random.default_rng(step)
        return {
            "image": rng.standard_normal((rows, 4, 4, 1)).astype(np.float32),
            "tokens": rng.integers(0, 100, (rows, 6)).astype(np.int32),
            "index": np.arange(rows, dtype=np.int32) + step * rows,
            "valid": rng.random(rows) > 0.3,
        }

    def check(global_batch, batch, mesh, spec, shard_rows):
        for key, value in batch.items():
            array = global_batch[key]
            assert array.shape == value.shape and array.dtype == value.dtype, (key, array.shape,
            array.dtype) assert array.sharding.mesh == mesh and array.sharding.spec == spec, (key,
            array.sharding) np.testing.assert_array_equal(np.asarray(array), value)
            for shard in array.addressable_shards:
                assert shard.data.shape[0] == shard_rows, (key, shard.data.shape)
                np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])

    # Batch over one 'data' axis of 8 devices.
    mesh = Mesh(devices, ("data",))
    batch = host_batch(16)
    check(to_global_batch(batch, mesh), batch, mesh, PartitionSpec(("data",)), 2)

    # 'data' x 'fsdp' both split the batch (4 shards); 'model' replicates it.
    mesh = Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "model"))
    assert batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))
    check(to_global_batch(batch, mesh), batch, mesh, PartitionSpec(("data", "fsdp")), 4)
    # Mesh order decides the layout, whatever order the axes are named in.
    assert batch_sharding(mesh, ("fsdp", "data")).spec == PartitionSpec(("data", "fsdp"))
    only_data = to_global_batch(batch, mesh, batch_axes=("data",))
    check(only_data, batch, mesh, PartitionSpec(("data",)), 8)

    # A jitted reduction over the global batch sees every row once.
    total = jax.jit(lambda b: b["index"].sum())(to_global_batch(batch, mesh))
    assert int(total) == batch["index"].sum()

    # Prefetching keeps order and contents.
    batches = [host_batch(8, step) for step in range(5)]
    seen = list(prefetch_to_mesh(iter(batches), mesh, size=2))
    assert len(seen) == 5
    for got, want in zip(seen, batches):
        check(got, want, mesh, PartitionSpec(("data", "fsdp")), 2)

    for bad, error in (
        (lambda: to_global_batch(host_batch(6), mesh), ValueError),           # 6 rows, 4 shards
        (lambda: to_global_batch(batch, Mesh(devices, ("model",))), ValueError),
        (lambda: to_global_batch({"text": np.array(["a"] * 8)}, mesh), TypeError),
        (lambda: next(prefetch_to_mesh(iter(batches), mesh, size=0)), ValueError),
    ):
        try:
            bad()
        except error:
            pass
        else:
            raise AssertionError(f"expected {error.__name__}")
    print("OK")
""")

TWO_PROCESS_GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    sys.path.insert(0, sys.argv[1])
    from jimte.batches import to_global_batch

    port, process_id = int(sys.argv[2]), int(sys.argv[3])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices())
    # Each host contributes 4 rows whose 'index' says which host and row they came from.
    host = {"index": (np.arange(4) + 100 * process_id).astype(np.int32),
            "valid": np.array([True, True, True, process_id == 0])}
    batch = to_global_batch(host, mesh)
    assert batch["index"].shape == (8,)
    for shard in batch["index"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), host["index"][shard.index[0].start %
        4:][:2])
    total = jax.jit(lambda b: b["index"].sum())(batch)
    count = jax.jit(lambda b: b["valid"].sum())(batch)
    assert int(total) == sum(range(4)) + sum(range(100, 104)), int(total)
    assert int(count) == 7, int(count)
    print("OK")
    jax.distributed.shutdown()
""")


def _run_jax(script: str, *args: str, env_extra: dict[str, str]) -> subprocess.Popen:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu", **env_extra}
  return subprocess.Popen(
    [sys.executable, "-c", script, str(REPO), *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _expect_ok(proc: subprocess.Popen) -> None:
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0 and stdout.strip().endswith("OK"), stdout[-2000:] + stderr[-4000:]


def test_to_global_batch_on_eight_simulated_devices():
  _expect_ok(
    _run_jax(
      GLOBAL_BATCH_SCRIPT, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
  )


def test_to_global_batch_across_two_real_processes():
  import socket

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [
    _run_jax(TWO_PROCESS_GLOBAL_BATCH_SCRIPT, str(port), str(i), env_extra=env) for i in range(2)
  ]
  for proc in procs:
    _expect_ok(proc)


def test_global_order_batches_do_not_depend_on_the_number_of_hosts(source, tokenizer):
  """With global_order, the hosts' batches concatenated in process order are the one-host batch,
  augmentation and MLM masks included, from any start step (so runs resume on other host counts)."""
  kwargs = dict(global_order=True, mlm=True)
  one_host = take(train(source, tokenizer, batch_size=8, **kwargs), 7)
  hosts = [
    take(train(source, tokenizer, batch_size=4, process_index=p, process_count=2, **kwargs), 7)
    for p in range(2)
  ]
  joined = [
    {k: np.concatenate([hosts[0][s][k], hosts[1][s][k]]) for k in one_host[s]} for s in range(7)
  ]
  assert_batches_equal(one_host, joined)
  # Every epoch (40 examples = 5 batches of 8) visits each example once.
  first_epoch = np.concatenate([b["index"] for b in one_host[:5]])
  np.testing.assert_array_equal(np.sort(first_epoch), np.arange(40))
  resumed = take(
    train(
      source, tokenizer, batch_size=4, process_index=1, process_count=2, start_step=3, **kwargs
    ),
    4,
  )
  assert_batches_equal(resumed, hosts[1][3:7])


def test_global_order_needs_random_access(tokenizer):
  with pytest.raises(ValueError, match="random-access"):
    inp.make_train_dataset(
      dataset_of(8),
      tokenizer=tokenizer,
      image_size=IMAGE_SIZE,
      batch_size=4,
      seed=0,
      global_order=True,
    )
