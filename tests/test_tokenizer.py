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


# --- the original release's word rule (word_normalizer="original") -------------------------------

# What the release's `normalize_report` + `.lower()` + RegexpTokenizer(r'\w+') make of report
# sentences, worked out by hand from scispaCy's tokenizer rules and spaCy's `like_num`.
ORIGINAL_WORDS = {
  "Heart size normal. No effusion, XXXX.": "heart size normal no effusion xxxx",
  # '3.5' and '50' are numbers (suffix '%' split off); T12-L1 is one token, not a number.
  "3.5 cm (left) T12-L1; 50% a/b \u2014 x-XXXX": "number cm left t12 l1 number a b x xxxx",
  # '10-15' splits at the hyphen between digits, '15mm' at the unit; 'e.g.' loses its periods;
  # 'left.Right' splits at '.' before a capital; number words and fractions are numbers.
  "Two views. 1. 10-15mm nodule, e.g. left.Right lung 1/2 way.": (
    "number views number number number mm nodule eg left right lung number way"
  ),
  # 'DEID' is deleted; a run of '_' leaves one '_' word; ordinals are numbers; '10:30' is no
  # number (two words); 'one-third' is one token, no number.
  "DEID ___ seen 2nd time on first film at 10:30, one-third x-ray": (
    "_ seen number time on number film at 10 30 one third x ray"
  ),
  "Compared to prior (2). +5 -3 \u00b12 T5 3x4": (
    "compared to prior number number number number t5 3x4"
  ),
}


def test_original_word_rule_on_report_sentences_in_python_and_graph(reports):
  texts = list(ORIGINAL_WORDS)
  assert [tok.normalize_original_words(t) for t in texts] == list(ORIGINAL_WORDS.values())
  texts += reports[1][:400] + TRICKY
  python = [tok.normalize_original_words(t) for t in texts]
  graph = tok.normalize_original_words_tf(tf.constant(texts)).numpy()
  assert [g.decode("utf-8") for g in graph] == python


@pytest.fixture(scope="module")
def original_words(reports) -> tok.Tokenizer:
  train, _ = reports
  return tok.Tokenizer.train(
    train,
    max_len=512,
    vocab_size=3000,
    model_type="word",
    word_normalizer="original",
    num_threads=1,
  )


def test_original_word_model_is_recorded_in_the_model_and_tokenizes_alike(
  original_words, reports, tmp_path
):
  assert original_words.normalizer == tok.ORIGINAL_WORD_NORMALIZER_NAME
  # The model alone says which rule it needs (a tokenizer rebuilt from it, as the pipelines do).
  rebuilt = tok.Tokenizer(original_words.model_proto, max_len=64)
  assert rebuilt.normalizer == tok.ORIGINAL_WORD_NORMALIZER_NAME
  pieces = {original_words.id_to_piece(i) for i in range(original_words.vocab_size)}
  assert "▁number" in pieces and "▁xxxx" in pieces and "▁XXXX" not in pieces
  texts = reports[1][:200] + list(ORIGINAL_WORDS)
  eager = original_words.encode(texts)
  np.testing.assert_array_equal(original_words.tokenize(tf.constant(texts)).numpy(), eager)
  body = (eager != tok.PAD_ID) & (eager != tok.BOS_ID) & (eager != tok.EOS_ID)
  expected = [len(tok.normalize_original_words(t).split()) for t in texts]
  np.testing.assert_array_equal(body.sum(axis=1), expected)
  loaded = tok.Tokenizer.load(original_words.save(tmp_path / "original"))
  assert loaded.normalizer == tok.ORIGINAL_WORD_NORMALIZER_NAME
  np.testing.assert_array_equal(loaded.encode(texts), eager)
  with pytest.raises(ValueError, match="word_normalizer.*model_type='word'"):
    tok.train_sentencepiece(reports[0][:10], word_normalizer="original")
  with pytest.raises(ValueError, match="word_normalizer must be one of"):
    tok.train_sentencepiece(reports[0][:10], model_type="word", word_normalizer="scispacy")


def test_a_run_trains_its_tokenizer_with_the_configured_word_rule(tmp_path):
  """config.tokenizer.word_normalizer reaches the trainer's tokenizer (and the saved one)."""
  import ml_collections

  from jimte.data import _load_or_train_tokenizer

  texts = ["Heart size 12 cm, normal.", "No effusion. 3 nodules seen."] * 20
  for rule, expected in (("original", tok.ORIGINAL_WORD_NORMALIZER_NAME), ("plain", None)):
    tc = dict(vocab_size=40, max_len=16, model_type="word", word_normalizer=rule, path="")
    config = ml_collections.ConfigDict(dict(tokenizer=tc))
    directory = str(tmp_path / rule)
    tokenizer = _load_or_train_tokenizer(config, directory, None, texts)
    assert (tokenizer.normalizer == tok.ORIGINAL_WORD_NORMALIZER_NAME) == (expected is not None)
    assert tok.Tokenizer.load(directory).normalizer == tokenizer.normalizer
    assert ("number" in tokenizer.decode(tokenizer.encode(["12 cm"]))[0]) == (rule == "original")
