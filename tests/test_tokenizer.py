"""Tests for data_pipeline.tokenizer on the real IU / Open-i reports (skipped when the data is
absent)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from data_pipeline import tokenizer as tok

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IU_REPORTS = DATA / "iu_xray" / "reports_openi.csv"

# Awkward inputs the graph and eager paths must treat identically.
TRICKY = [
  "",
  "   ",
  "Heart size normal.\n\nNo  effusion.\t XXXX",
  "Normal chest x-XXXX. XXXXXXXX xxxx Xxxx",
  "ÉCOLE naïve café ＡＢＣ x\u00a0y ½ µ",
  "\u2603 snowman \U0001f600 and [MASK] spelled out",
]


def _iu_reports() -> list[str]:
  if not IU_REPORTS.exists():
    pytest.skip(f"{IU_REPORTS} not available")
  with IU_REPORTS.open(newline="", encoding="utf-8") as handle:
    rows = list(csv.DictReader(handle))
  texts = [f"{r['findings']} {r['impression']}".strip() for r in rows]
  return [t for t in texts if t]


@pytest.fixture(scope="module")
def reports() -> tuple[list[str], list[str]]:
  """IU reports split into a training part and a held-out part."""
  texts = _iu_reports()
  cut = (len(texts) * 3) // 4
  return texts[:cut], texts[cut:]


@pytest.fixture(scope="module")
def tokenizer(reports) -> tok.Tokenizer:
  train, _ = reports
  return tok.Tokenizer.train(train, max_len=512, vocab_size=2000, num_threads=1)


def test_normalize_lowercases_collapses_whitespace_and_keeps_redactions():
  assert tok.normalize_text("  The Heart\tis  NORMAL.\n") == "the heart is normal."
  assert tok.normalize_text("Normal chest x-XXXX. XXXX XXXX") == "normal chest x-XXXX. XXXX XXXX"
  # Only the exact upper-case redaction survives; ordinary words containing x are lower-cased.
  assert tok.normalize_text("Xxxx XXX xXXXX") == "xxxx xxx xXXXX"
  assert tok.normalize_text("ＡＢＣ ½") == "abc 1⁄2"


def test_graph_normaliser_matches_python(reports):
  texts = reports[1][:400] + TRICKY
  graph = tok.normalize_text_tf(tf.constant(texts)).numpy()
  assert [g.decode("utf-8") for g in graph] == [tok.normalize_text(t) for t in texts]


def test_special_ids_are_as_contracted(tokenizer):
  assert (
    tokenizer.pad_id,
    tokenizer.unk_id,
    tokenizer.bos_id,
    tokenizer.eos_id,
    tokenizer.mask_id,
  ) == (0, 1, 2, 3, 4)
  assert [tokenizer.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "<s>", "</s>", "[MASK]"]
  assert 1000 < tokenizer.vocab_size <= 2000
  # The redaction is frequent enough in IU to earn a piece of its own.
  ids = tokenizer.encode(["XXXX"])[0]
  assert ids[0] == tok.BOS_ID and tokenizer.id_to_piece(ids[1]) == "▁XXXX" and ids[2] == tok.EOS_ID


def test_round_trip_on_held_out_reports(tokenizer, reports):
  held_out = reports[1]
  ids = tokenizer.encode(held_out)
  assert ids.dtype == np.int32 and ids.shape == (len(held_out), 512)
  assert not (ids == tok.UNK_ID).any(), "byte fallback should leave no UNK"
  lengths = (ids != tok.PAD_ID).sum(axis=1)
  assert lengths.max() < 512, "raise max_len: a held-out report was truncated"
  assert tokenizer.decode(ids) == [tok.normalize_text(t) for t in held_out]
  # Characters never seen in training come back too (spelled as bytes).
  assert tokenizer.decode(tokenizer.encode(TRICKY)) == [tok.normalize_text(t) for t in TRICKY]


def test_layout_bos_words_eos_pad(tokenizer):
  ids = tokenizer.encode(["No acute disease.", ""])
  n = int((ids[0] != tok.PAD_ID).sum())
  assert ids[0, 0] == tok.BOS_ID and ids[0, n - 1] == tok.EOS_ID and n > 3
  assert (ids[0, 1 : n - 1] >= tok.FIRST_ORDINARY_ID).all()
  assert (ids[0, n:] == tok.PAD_ID).all()
  assert ids[1, :2].tolist() == [tok.BOS_ID, tok.EOS_ID] and (ids[1, 2:] == tok.PAD_ID).all()


def test_graph_and_eager_ids_identical(tokenizer, reports):
  texts = reports[1][:300] + TRICKY
  eager = tokenizer.encode(texts)
  graph = tokenizer.tokenize(tf.constant(texts)).numpy()
  np.testing.assert_array_equal(graph, eager)
  # Per element inside a tf.data map (scalar input -> [L]), the way the input pipeline uses it.
  ds = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
  np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())), eager)


def test_truncation_keeps_eos(tokenizer, reports):
  short = tok.Tokenizer(tokenizer.model_proto, max_len=8)
  long_text = max(reports[1], key=len)
  full = tokenizer.encode([long_text])[0]
  for ids in (short.encode([long_text])[0], short.tokenize(long_text).numpy()):
    assert ids.shape == (8,)
    assert ids[0] == tok.BOS_ID and ids[-1] == tok.EOS_ID
    np.testing.assert_array_equal(ids[1:-1], full[1:7])  # the first six pieces, in order
  # A text of exactly max_len - 2 pieces is not truncated: its EOS lands in the last slot.
  exact = short.decode(full[None, :7])[0]
  ids = short.encode([exact])[0]
  assert ids[-1] == tok.EOS_ID and (ids != tok.PAD_ID).all()


def test_save_load_round_trip(tokenizer, reports, tmp_path):
  texts = reports[1][:100] + TRICKY
  saved = Path(tokenizer.save(tmp_path / "tok"))
  assert sorted(p.name for p in saved.iterdir()) == [tok.MODEL_FILENAME, tok.CONFIG_FILENAME]
  config = json.loads((saved / tok.CONFIG_FILENAME).read_text())
  assert (
    config["max_len"] == 512
    and config["mask_id"] == 4
    and config["vocab_size"] == tokenizer.vocab_size
  )
  loaded = tok.Tokenizer.load(saved)
  assert loaded.max_len == tokenizer.max_len and loaded.vocab_size == tokenizer.vocab_size
  np.testing.assert_array_equal(loaded.encode(texts), tokenizer.encode(texts))
  np.testing.assert_array_equal(loaded.tokenize(texts).numpy(), tokenizer.encode(texts))

  config["normalizer"] = "something_else"
  (saved / tok.CONFIG_FILENAME).write_text(json.dumps(config))
  with pytest.raises(ValueError, match="normaliser"):
    tok.Tokenizer.load(saved)


def test_rejects_model_without_contract_ids(reports, tmp_path):
  prefix = tmp_path / "plain"
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(reports[0][:500]))
  spm.SentencePieceTrainer.train(
    input=str(corpus), model_prefix=str(prefix), vocab_size=300, minloglevel=2
  )
  with pytest.raises(ValueError, match="contract"):
    tok.Tokenizer(Path(f"{prefix}.model").read_bytes())


def test_bpe_model_type(reports):
  bpe = tok.Tokenizer.train(
    reports[0][:800], max_len=512, vocab_size=500, model_type="bpe", num_threads=1
  )
  texts = reports[1][:50]
  assert bpe.decode(bpe.encode(texts)) == [tok.normalize_text(t) for t in texts]
  np.testing.assert_array_equal(bpe.tokenize(texts).numpy(), bpe.encode(texts))


def test_cli_reads_csv_columns_and_text_files(reports, tmp_path):
  assert tok.read_texts(f"{IU_REPORTS}:findings+impression")[:3] == reports[0][:3]
  lines = tmp_path / "reports.txt"
  lines.write_text("\n".join(reports[0][:600]) + "\n\n")
  assert tok.read_texts(str(lines)) == reports[0][:600]

  out = tmp_path / "cli_tok"
  assert (
    tok.main(["--texts", str(lines), "--vocab_size", "400", "--max_len", "384", "--out", str(out)])
    == 0
  )
  loaded = tok.Tokenizer.load(out)
  assert loaded.max_len == 384 and loaded.vocab_size <= 400
  held_out = reports[1][:20]
  assert loaded.decode(loaded.encode(held_out)) == [tok.normalize_text(t) for t in held_out]


# --- the word model (the original JoImTeRNet's word vocabulary) ---------------------------------


@pytest.fixture(scope="module")
def words(reports) -> tok.Tokenizer:
  train, _ = reports
  return tok.Tokenizer.train(train, max_len=512, vocab_size=3000, model_type="word", num_threads=1)


def test_word_normaliser_drops_punctuation_in_graph_and_python(reports):
  cases = {
    "Heart size normal. No effusion, XXXX.": "heart size normal no effusion XXXX",
    "3.5 cm (left) T12-L1; 50% a/b \u2014 x-XXXX": "3 5 cm left t12 l1 50 a b x XXXX",
    "ÉCOLE naïve ½ [MASK] _under_": "école naïve 1 2 mask under",
  }
  texts = list(cases) + reports[1][:400] + TRICKY
  python = [tok.normalize_text(t, drop_punctuation=True) for t in texts]
  assert python[: len(cases)] == list(cases.values())
  graph = tok.normalize_text_tf(tf.constant(texts), drop_punctuation=True).numpy()
  assert [g.decode("utf-8") for g in graph] == python


def test_word_model_one_id_per_word_and_round_trip(words, reports):
  assert words.model_type == "word" and 1500 < words.vocab_size <= 3000
  assert [words.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "<s>", "</s>", "[MASK]"]
  pieces = [words.id_to_piece(i) for i in range(tok.FIRST_ORDINARY_ID, words.vocab_size)]
  assert all(p.startswith("▁") and p[1:].isalnum() for p in pieces), "whole words, no punctuation"
  held_out = reports[1]
  normalised = [tok.normalize_text(t, drop_punctuation=True) for t in held_out]
  ids = words.encode(held_out)
  body = (ids != tok.PAD_ID) & (ids != tok.BOS_ID) & (ids != tok.EOS_ID)
  np.testing.assert_array_equal(body.sum(axis=1), [len(t.split()) for t in normalised])
  known = ~(ids == tok.UNK_ID).any(axis=1)
  assert known.mean() > 0.5, "most held-out reports use only training words"
  decoded = words.decode(ids[known])
  assert decoded == [t for t, k in zip(normalised, known, strict=True) if k]


def test_word_model_in_graph_equals_eager_with_unknown_words(words, reports):
  texts = reports[1][:300] + TRICKY + ["heart zzyzxq qqxxz normal, [MASK]."]
  eager = words.encode(texts)
  np.testing.assert_array_equal(words.tokenize(tf.constant(texts)).numpy(), eager)
  ds = tf.data.Dataset.from_tensor_slices(texts).map(words.tokenize)
  np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())), eager)
  # Each unseen word is one UNK (SentencePiece alone would merge the two into one); '[MASK]'
  # written in a report is the word 'mask' (unseen in IU too), never MASK_ID.
  last = eager[-1][: int((eager[-1] != tok.PAD_ID).sum())]
  pieces = [words.id_to_piece(i) for i in last[1:-1]]
  assert pieces == ["▁heart", "<unk>", "<unk>", "▁normal", "<unk>"]
  assert not (eager == tok.MASK_ID).any()


def test_word_model_mlm_masks_only_words(words, reports):
  from data_pipeline.input import preprocess

  tokens = words.tokenize(tf.constant(reports[1][:64] + ["heart zzyzxq qqxxz normal"]))
  masking = preprocess.MlmMasking(select_rate=0.5)
  for row, key in zip(tokens, range(len(tokens)), strict=True):
    out = preprocess.mask_tokens(row, tf.constant([1, key], tf.int64), words.vocab_size, masking)
    selected = out["mlm_weights"].numpy() == 1
    row = row.numpy()
    assert selected.any() and (row[selected] >= tok.FIRST_ORDINARY_ID).all(), "never UNK/special"
    masked = out["mlm_tokens"].numpy()
    assert (masked[~selected] == row[~selected]).all()
    assert ((masked[selected] == tok.MASK_ID) | (masked[selected] >= tok.FIRST_ORDINARY_ID)).all()
    assert (masked < words.vocab_size).all()


def test_model_type_is_read_back_from_the_model(words, tokenizer, reports, tmp_path):
  assert tok.model_type_of(tokenizer.model_proto) == tokenizer.model_type == "unigram"
  assert tok.Tokenizer(words.model_proto, max_len=16).model_type == "word"
  saved = Path(words.save(tmp_path / "words"))
  config = json.loads((saved / tok.CONFIG_FILENAME).read_text())
  assert config["model_type"] == "word" and config["normalizer"] == tok.WORD_NORMALIZER_NAME
  loaded = tok.Tokenizer.load(saved)
  np.testing.assert_array_equal(loaded.encode(reports[1][:50]), words.encode(reports[1][:50]))
  config["normalizer"] = tok.NORMALIZER_NAME
  (saved / tok.CONFIG_FILENAME).write_text(json.dumps(config))
  with pytest.raises(ValueError, match="normaliser.*word"):
    tok.Tokenizer.load(saved)
  with pytest.raises(ValueError, match="model_type"):
    tok.train_sentencepiece(reports[0][:10], model_type="char")
