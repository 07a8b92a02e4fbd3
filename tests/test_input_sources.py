"""Tests for `data_pipeline.input.sources`: each source kind, per-host shares (also across two real
processes), argument checks; and `data_pipeline.input.study_filter`: one frontal image per study."""

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
from data_pipeline.input import study_filter
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
      # Evaluation keeps the aspect: the centred 48 px square of the 56x48 images, resized.
      expected = tf.image.resize(images[index][:, 4:52] / 255.0, [IMAGE_SIZE] * 2, antialias=True)
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


# --- one frontal image per study (data_pipeline.input.study_filter) ----------------------------

STUDY_VIEWS = ["AP", "PA", "L", "ap supine", "LATERAL", "LL", "PA", "PA", "AP", "PA", "AP", "PA"]
# Image ids in an order unrelated to the index: the lowest id of a study is not its first row.
STUDY_DICOMS = ["d7", "d3", "d0", "d9", "d1", "d2", "d8", "d6", "d5", "d4", "da", "db"]


def _study_dataset(count: int = 12) -> tf.data.Dataset:
  images, texts, study_ids = make_arrays(count)  # studies: pairs of consecutive rows
  return tf.data.Dataset.from_tensor_slices(
    {
      "image": images,
      "text": texts,
      "study_id": study_ids,
      "view_position": STUDY_VIEWS[:count],
      "dicom_id": STUDY_DICOMS[:count],
    }
  )


def test_is_frontal_reads_the_first_word_of_the_view():
  views = np.array(["PA", "ap", "AP Supine", "L", "LATERAL", "", " pa "], dtype=object)
  np.testing.assert_array_equal(
    study_filter.is_frontal(views), [True, True, True, False, False, True, True]
  )


def test_one_frontal_per_study_keeps_the_lowest_frontal_image_id():
  source = inp.DatasetSource(_study_dataset(), name="studies")
  meta = study_filter.read_study_metadata(source)
  np.testing.assert_array_equal(meta.index, np.arange(12))
  assert meta.view.tolist() == STUDY_VIEWS and meta.image_id.tolist() == STUDY_DICOMS
  selection = study_filter.one_frontal_per_study(meta)
  # Study 0 (rows 0, 1): d3 < d7 -> row 1. Study 1 (rows 2, 3): row 2 is lateral -> row 3.
  # Study 2 (rows 4, 5): both lateral -> none. Studies 3..5: d6 (7), d4 (9), da (10).
  np.testing.assert_array_equal(selection.indices, [1, 3, 7, 9, 10])
  assert selection.num_examples == 12 and selection.num_dropped == 7
  assert selection.dropped_not_frontal == 3 and selection.dropped_same_study == 4
  assert selection.studies_without_frontal == 1
  # Deterministic: the same pick from the same split read again, or read in another row order.
  again = study_filter.one_frontal_per_study(study_filter.read_study_metadata(source))
  np.testing.assert_array_equal(again.indices, selection.indices)
  order = np.random.default_rng(0).permutation(12)
  shuffled = study_filter.StudyMetadata(
    index=meta.index[order],
    study_id=meta.study_id[order],
    text=meta.text[order],
    view=meta.view[order],
    image_id=meta.image_id[order],
  )
  np.testing.assert_array_equal(
    study_filter.one_frontal_per_study(shuffled).indices, selection.indices
  )


def test_one_frontal_per_study_without_views_keeps_the_first_row(source):
  meta = study_filter.read_study_metadata(source)  # 40 rows, studies of 2, no view, no image id
  assert set(meta.view.tolist()) == {""} and set(meta.image_id.tolist()) == {""}
  selection = study_filter.one_frontal_per_study(meta)
  np.testing.assert_array_equal(selection.indices, np.arange(0, 40, 2))
  assert selection.dropped_same_study == 20 and selection.dropped_not_frontal == 0


@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_subset_source_hosts_read_the_kept_examples_once(kind, tokenizer):
  count = 21
  images, texts, study_ids = make_arrays(count)
  base = (
    inp.ArraySource("a", images=images, texts=texts, study_ids=study_ids)
    if kind == "array"
    else inp.DatasetSource(
      tf.data.Dataset.from_tensor_slices({"image": images, "text": texts, "study_id": study_ids})
    )
  )
  kept = [0, 2, 3, 5, 8, 13, 14, 20]
  subset = study_filter.SubsetSource(base, kept)
  assert subset.num_examples == len(kept)
  seen, num_batches = [], set()
  for host in range(3):
    batches = inp.make_eval_batches(
      subset, tokenizer=tokenizer, image_size=16, batch_size=2, process_index=host, process_count=3
    )
    num_batches.add(batches.num_batches)
    for batch in batches:
      index = batch["index"][batch["valid"]]
      seen.extend(index.tolist())
      np.testing.assert_array_equal(
        batch["tokens"][batch["valid"]], tokenizer.encode([texts[i] for i in index])
      )
    assert subset.num_host_examples(host, 3) == len(set(kept) & set(range(host, count, 3)))
  assert sorted(seen) == kept and len(num_batches) == 1
  with pytest.raises(ValueError, match=r"\[0, 21\)"):
    study_filter.SubsetSource(base, [3, 21])


def test_study_filter_on_a_tfds_directory(tokenizer, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  images, texts, study_ids = make_arrays(12)
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 1)),
      "text": tfds.features.Text(),
      "study_id": tfds.features.Text(),
      "view_position": tfds.features.Text(),
      "dicom_id": tfds.features.Text(),
    }
  )
  examples = [
    (
      i,
      {
        "image": images[i],
        "text": texts[i],
        "study_id": study_ids[i],
        "view_position": STUDY_VIEWS[i],
        "dicom_id": STUDY_DICOMS[i],
      },
    )
    for i in range(12)
  ]
  builder = tfds.dataset_builders.store_as_tfds_dataset(
    name="toy_studies",
    version="1.0.0",
    features=features,
    split_datasets={"test": examples},
    data_dir=str(tmp_path),
    disable_shuffling=True,
  )
  source = inp.TfdsSource(str(builder.data_dir), split="test")
  meta = study_filter.read_study_metadata(source)
  assert meta.text.tolist() == texts and meta.image_id.tolist() == STUDY_DICOMS
  selection = study_filter.one_frontal_per_study(meta)
  np.testing.assert_array_equal(selection.indices, [1, 3, 7, 9, 10])
  subset = study_filter.SubsetSource(source, selection.indices)
  shares = [study_filter.host_indices(subset, host, 2).tolist() for host in range(2)]
  assert shares == [[1, 3], [7, 9, 10]]  # the kept rows of the contiguous halves 0..5 and 6..11
  read = [
    int(i)
    for host in range(2)
    for b in inp.make_eval_batches(
      subset, tokenizer=tokenizer, image_size=16, batch_size=2, process_index=host, process_count=2
    )
    for i, v in zip(b["index"], b["valid"], strict=True)
    if v
  ]
  assert read == [1, 3, 7, 9, 10]


def test_study_metadata_rejects_a_non_string_view():
  images, texts, study_ids = make_arrays(2)
  dataset = tf.data.Dataset.from_tensor_slices(
    {"image": images, "text": texts, "study_id": study_ids, "view": [1, 2]}
  )
  with pytest.raises(ValueError, match="'view' must be a scalar string"):
    study_filter.read_study_metadata(inp.DatasetSource(dataset))
