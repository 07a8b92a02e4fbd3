"""Tests for `data_pipeline.input.pipelines`: batch contract, determinism, resume, evaluation
passes, global order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import input as inp
from data_pipeline import tokenizer as tok
from tests._input_data import (
  IMAGE_SIZE,
  KEYS,
  MAX_LEN,
  MLM_KEYS,
  assert_batches_equal,
  dataset_of,
  make_arrays,
  source_texts,
  take,
  train,
)

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
      # Evaluation does not augment: each valid image is the centred square of its source
      # (rows 4:52 of the 56x48 toy images), resized: the aspect is kept.
      expected = tf.image.resize(
        images[batch["index"][valid]][:, 4:52] / 255.0, [IMAGE_SIZE] * 2, antialias=True
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


# --- global order ---------------------------------------------------------------------------------


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


# --- the MLM stream: the reports of the split, its own order and position -------------------------


def _mlm(source, tokenizer, **kwargs):
  defaults = dict(tokenizer=tokenizer, batch_size=8, seed=0)
  return inp.make_mlm_dataset(source, **{**defaults, **kwargs}).as_numpy_iterator()


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_mlm_stream_is_text_only_and_masks_the_examples_own_report(source, tokenizer, kind):
  src = source if kind == "array" else dataset_of(40)
  batch = next(_mlm(src, tokenizer))
  assert set(batch) == (KEYS - {"image"}) | MLM_KEYS
  texts = source_texts(source)  # dataset_of(40) draws the same texts as the toy source
  np.testing.assert_array_equal(
    batch["tokens"], tokenizer.encode([texts[i] for i in batch["index"]])
  )
  selected = batch["mlm_weights"] > 0
  assert selected.any(axis=1).all()
  np.testing.assert_array_equal(batch["mlm_targets"][selected], batch["tokens"][selected])
  assert (batch["mlm_targets"][~selected] == 0).all()
  np.testing.assert_array_equal(batch["mlm_tokens"][~selected], batch["tokens"][~selected])


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_mlm_stream_has_its_own_order_and_resumes_exactly(tokenizer, kind):
  # 20 examples, batch 6: steps 3..6 cross the epoch boundaries at positions 20 and 40.
  images, texts, study_ids = make_arrays(20)
  src = (
    inp.ArraySource("t", images=images, texts=texts, study_ids=study_ids)
    if kind == "array"
    else dataset_of(20)
  )
  full = take(_mlm(src, tokenizer, batch_size=6, seed=3), 7)
  assert_batches_equal(full[3:], take(_mlm(src, tokenizer, batch_size=6, seed=3, start_step=3), 4))
  indices = np.concatenate([b["index"] for b in full])[:40].reshape(2, 20)
  assert all(sorted(epoch.tolist()) == list(range(20)) for epoch in indices)  # whole passes
  itm = np.concatenate([b["index"] for b in take(train(src, tokenizer, batch_size=6, seed=3), 7)])
  assert not np.array_equal(itm[:40], indices.reshape(-1))  # same seed, independent order


def test_mlm_stream_global_order_does_not_depend_on_the_number_of_hosts(source, tokenizer):
  one = take(_mlm(source, tokenizer, batch_size=8, global_order=True), 3)
  hosts = [
    take(
      _mlm(source, tokenizer, batch_size=4, global_order=True, process_index=p, process_count=2), 3
    )
    for p in range(2)
  ]
  for step in range(3):
    for key in one[step]:
      merged = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(one[step][key], merged, err_msg=key)


def test_mlm_stream_needs_masking(source, tokenizer):
  with pytest.raises(ValueError, match="masking"):
    inp.make_mlm_dataset(source, tokenizer=tokenizer, batch_size=8, seed=0, masking=False)
