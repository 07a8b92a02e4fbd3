"""Tests for `data_pipeline.input.sources`: each source kind, per-host shares (also across two real
processes), argument checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import input as inp
from tests._input_data import (
  IMAGE_SIZE,
  REPO,
  assert_batches_equal,
  make_arrays,
  take,
  train,
)


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
    from tests._input_data import make_arrays, dataset_of

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
                                    seed=1, process_index=host, process_count=2)
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
