"""SentencePiece tokenizer for radiology reports, with the token ids fixed by docs/contracts.md.

Ids: PAD = 0, UNK = 1, BOS = 2 (plays [CLS]), EOS = 3, MASK = 4 ('[MASK]').
A sequence of fixed length L is `[BOS] w1 .. wn [EOS] [PAD] ..`; truncation drops words, never the
`[EOS]`. The same text normaliser runs at training time, in the tf.data graph and in eager numpy
code, so the three agree id for id.

Model types: sub-word pieces (`unigram`, `bpe`; byte fallback, so decoding is exact) or whole words
(`word`, as the original JoImTeRNet's word vocabulary: punctuation dropped, one id per word, each
word outside the vocabulary one UNK; `word_normalizer="original"`: the release's word rule, numbers
as 'number'). The type and the normaliser are read back from the model itself.

Command line (one report per line in a text file, or columns of a CSV joined by '+')::

    python -m data_pipeline.tokenizer \\
        --texts ../shared/data/iu_xray/reports_openi.csv:findings+impression \\
        --vocab_size 8000 --out /tmp/tokenizer
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4
MASK_PIECE = "[MASK]"
# Ids below this are special (PAD, UNK, BOS, EOS, MASK); ordinary pieces start here.
FIRST_ORDINARY_ID = 5

MODEL_FILENAME = "spm.model"
CONFIG_FILENAME = "tokenizer.json"
MODEL_TYPES = ("unigram", "bpe", "word")
# Bump when normalize_text changes: a saved tokenizer records which normaliser it was trained with.
NORMALIZER_NAME = "nfkc_lower_keep_xxxx_v1"
# The word model's: the same, then every character that is not a letter, digit or mark -> a space.
WORD_NORMALIZER_NAME = "nfkc_lower_keep_xxxx_words_v1"
# The original release's word rule (`original_words`): numbers -> 'number', see `_ORIGINAL_RULES`.
ORIGINAL_WORD_NORMALIZER_NAME = "original_release_words_v1"
# Word-model normalisers by config name (`config.tokenizer.word_normalizer`).
WORD_NORMALIZERS = {"plain": WORD_NORMALIZER_NAME, "original": ORIGINAL_WORD_NORMALIZER_NAME}

# IU / Open-i reports mark de-identified words with 'XXXX'. They are kept upper-case, so they stay
# distinct from real words and the redaction stays visible to the model.
_REDACTION = "XXXX"
# A private-use code point: NFKC and lower-casing leave it unchanged, so it shields the redaction
# through lower-casing both here and in the TensorFlow graph.
_REDACTION_PLACEHOLDER = "\ue000"
# Explicit ASCII whitespace class: Python's and RE2's '\s' differ, this spelling means the same in
# both.
_WHITESPACE_PATTERN = "[ \\t\\n\\r\\f\\v]+"
_WHITESPACE_RE = re.compile(_WHITESPACE_PATTERN)
# Word models keep runs of letters, digits and marks (Unicode L, N, M); RE2 spells the class
# directly, Python's re builds it from unicodedata (`_non_word_re`).
_NON_WORD_PATTERN_RE2 = "[^\\pL\\pN\\pM]+"


@functools.cache
def _non_word_re(also_word: str = "") -> re.Pattern:
  """Python's re lacks \\p{..}: the class of all code points outside Unicode L, N and M (and
  outside the characters of `also_word`)."""
  ranges, start = [], None
  for code in range(sys.maxunicode + 2):
    outside = code <= sys.maxunicode and unicodedata.category(chr(code))[0] not in "LNM"
    outside = outside and chr(code) not in also_word
    if outside and start is None:
      start = code
    elif not outside and start is not None:
      ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
      start = None
  return re.compile(f"[{''.join(ranges)}]+")


def normalize_text(text: str, drop_punctuation: bool = False) -> str:
  """Normalises one report: NFKC, lower-case except 'XXXX' redactions, whitespace runs -> one
  space; with `drop_punctuation` (word models) every non-letter/digit/mark character -> a space."""
  text = unicodedata.normalize("NFKC", text)
  text = text.replace(_REDACTION, _REDACTION_PLACEHOLDER).lower()
  text = text.replace(_REDACTION_PLACEHOLDER, _REDACTION)
  if drop_punctuation:
    text = _non_word_re().sub(" ", text)
  return _WHITESPACE_RE.sub(" ", text).strip(" ")


def normalize_text_tf(texts: tf.Tensor, drop_punctuation: bool = False) -> tf.Tensor:
  """The graph version of `normalize_text`, element-wise on a string tensor of any shape."""
  texts = tf_text.normalize_utf8(texts, "NFKC")
  texts = tf.strings.regex_replace(texts, _REDACTION, _REDACTION_PLACEHOLDER, replace_global=True)
  texts = tf.strings.lower(texts, encoding="utf-8")
  texts = tf.strings.regex_replace(texts, _REDACTION_PLACEHOLDER, _REDACTION, replace_global=True)
  if drop_punctuation:
    texts = tf.strings.regex_replace(texts, _NON_WORD_PATTERN_RE2, " ", replace_global=True)
  texts = tf.strings.regex_replace(texts, _WHITESPACE_PATTERN, " ", replace_global=True)
  return tf.strings.strip(texts)


# --- the original release's word rule ---------------------------------------------------------
# JoImTeR/dataset_iu.py `normalize_report` (scispaCy tokens; `like_num` tokens -> 'NUMBER'; doubled
# punctuation dropped; 'DEID' removed; every ',' and '.' deleted), then, as the release's
# vocabulary notebook (ScratchPads/DatasetPreprocess_IU.ipynb) does, `.lower()` and
# `RegexpTokenizer(r'\w+')`: words are runs of letters, digits and '_', all other punctuation goes.
# Without scispaCy, the token boundaries that decide what is a number are rebuilt with regular
# expressions that mean the same in Python's re and in RE2 (the tf.data graph), on a string whose
# tokens are kept apart by two spaces (so `( )...( )` matches each token on its own).
# spaCy's English `like_num` words (cardinals and ordinals), matched in any case.
_NUMBER_WORDS = (
  "zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
  "fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|"
  "ninety|hundred|thousand|million|billion|trillion|quadrillion|gajillion|bazillion|first|second|"
  "third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|fourteenth|"
  "fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth|fortieth|fiftieth|"
  "sixtieth|seventieth|eightieth|ninetieth|hundredth|thousandth|millionth|billionth|trillionth|"
  "quadrillionth|gajillionth|bazillionth"
)
# spaCy's units (the ASCII ones and µ), split off a digit they follow ('3cm' -> '3 cm'), longest
# first so that the alternation prefers them.
_UNITS = (
  "m/s|km/h|mbar|kmh|mph|hPa|km|dm|cm|mm|ha|µm|nm|yd|in|ft|kg|mg|µg|lb|oz|Pa|mb|MB|kb|KB|gb|GB|"
  "tb|TB|m|g|t|T|G|M|K|%"
)
_DIGITS = "[0-9,.]*[0-9][0-9,.]*"  # like_num ignores ',' and '.' before its isdigit()
_NUMBER = f"[+\\-±~]?(?:{_DIGITS}/{_DIGITS}|{_DIGITS}(?i:st|nd|rd|th)?|(?i:{_NUMBER_WORDS}))"
_ORIGINAL_RULES = (
  ("DEID", ""),
  (_WHITESPACE_PATTERN, " "),
  ("_+", " _ "),  # spaCy splits every '_' off, then drops all but the last of a run
  (" ", "  "),
  # Prefix and suffix punctuation of each token (brackets, quotes, separators, a final '.').
  ("( )([(\\[{<\"'§%=+#*&]+)", "\\1\\2  "),
  ("([)\\]}>\"',;:!?.%*&#]+)( )", "  \\1\\2"),
  # Infixes: an operator between digits ('10-15'), '.' between a lower- and an upper-case letter,
  # ',' between letters (each twice: a match consumes the character after it).
  ("([0-9])([-+*^])([0-9-])", "\\1  \\2  \\3"),
  ("([0-9])([-+*^])([0-9-])", "\\1  \\2  \\3"),
  ("([a-z])\\.([A-Z])", "\\1  .  \\2"),
  ("([A-Za-z]),([A-Za-z])", "\\1  ,  \\2"),
  ("([A-Za-z]),([A-Za-z])", "\\1  ,  \\2"),
  (f"( )([^ ]*[0-9])({_UNITS})( )", "\\1\\2  \\3\\4"),
  (f"( ){_NUMBER}( )", "\\1NUMBER\\2"),
  ("[,.]", ""),
)


def normalize_original_words(text: str) -> str:
  """The release's word rule (`_ORIGINAL_RULES`): NFKC, numbers -> 'number', 'DEID' removed, ','
  and '.' deleted, lower case (redactions too), words = runs of letters, digits, marks and '_'."""
  text = " " + unicodedata.normalize("NFKC", text) + " "
  for pattern, replacement in _ORIGINAL_RULES:
    text = re.sub(pattern, replacement, text)
  text = _non_word_re("_").sub(" ", text.lower())
  return _WHITESPACE_RE.sub(" ", text).strip(" ")


def normalize_original_words_tf(texts: tf.Tensor) -> tf.Tensor:
  """The graph version of `normalize_original_words`, element-wise on a string tensor."""
  texts = tf.strings.join([" ", tf_text.normalize_utf8(texts, "NFKC"), " "])
  for pattern, replacement in _ORIGINAL_RULES:
    texts = tf.strings.regex_replace(texts, pattern, replacement, replace_global=True)
  texts = tf.strings.lower(texts, encoding="utf-8")
  texts = tf.strings.regex_replace(texts, "[^\\pL\\pN\\pM_]+", " ", replace_global=True)
  texts = tf.strings.regex_replace(texts, _WHITESPACE_PATTERN, " ", replace_global=True)
  return tf.strings.strip(texts)


def normalizer_name(model_type: str, word_normalizer: str = "plain") -> str:
  """The normaliser a model of this type is trained and run with."""
  if model_type != "word":
    return NORMALIZER_NAME
  if word_normalizer not in WORD_NORMALIZERS:
    raise ValueError(
      f"word_normalizer must be one of {sorted(WORD_NORMALIZERS)}, got {word_normalizer!r}"
    )
  return WORD_NORMALIZERS[word_normalizer]


def normalize_for(name: str, text: str) -> str:
  """Eager: `text` through the normaliser called `name`."""
  if name == ORIGINAL_WORD_NORMALIZER_NAME:
    return normalize_original_words(text)
  return normalize_text(text, drop_punctuation=name == WORD_NORMALIZER_NAME)


def normalize_for_tf(name: str, texts: tf.Tensor) -> tf.Tensor:
  """In-graph: `texts` through the normaliser called `name`."""
  if name == ORIGINAL_WORD_NORMALIZER_NAME:
    return normalize_original_words_tf(texts)
  return normalize_text_tf(texts, drop_punctuation=name == WORD_NORMALIZER_NAME)


def _proto_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
  """(field number, wire type, value) of a serialized protobuf message (varint and bytes values)."""
  pos = 0

  def varint() -> int:
    nonlocal pos
    value, shift = 0, 0
    while True:
      byte = data[pos]
      pos += 1
      value |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        return value

  while pos < len(data):
    key = varint()
    number, wire = key >> 3, key & 7
    if wire == 0:
      yield number, wire, varint()
    elif wire == 2:
      size = varint()
      yield number, wire, data[pos : pos + size]
      pos += size
    elif wire in (1, 5):
      pos += 8 if wire == 1 else 4
    else:
      raise ValueError(f"not a SentencePiece model: protobuf wire type {wire}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  """(value, position after it) of the protobuf varint at `pos`."""
  value, shift = 0, 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, pos


def _varint_bytes(value: int) -> bytes:
  out = bytearray()
  while True:
    low, value = value & 0x7F, value >> 7
    out.append(low | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _raw_fields(data: bytes) -> Iterator[tuple[int, int, bytes]]:
  """(field number, wire type, the field's bytes with its key) of a serialized message."""
  pos = 0
  while pos < len(data):
    start = pos
    key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      pos = _varint(data, pos)[1]
    elif wire == 2:
      size, pos = _varint(data, pos)
      pos += size
    elif wire in (1, 5):
      pos += 8 if wire == 1 else 4
    else:
      raise ValueError(f"not a SentencePiece model: protobuf wire type {wire}")
    yield number, wire, data[start:pos]


def _bytes_field(number: int, value: bytes) -> bytes:
  return _varint_bytes(number << 3 | 2) + _varint_bytes(len(value)) + value


# ModelProto.trainer_spec = 2; TrainerSpec.model_prefix = 2, a string SentencePiece reads only when
# training to files. A model trained here in memory has it empty; a word model with the original
# normaliser records that normaliser's name there, so the model alone says how to normalise.
_TRAINER_SPEC, _MODEL_PREFIX = 2, 2


def _with_model_prefix(model_proto: bytes, prefix: str) -> bytes:
  """`model_proto` with trainer_spec.model_prefix set to `prefix`."""
  out = bytearray()
  for number, wire, raw in _raw_fields(model_proto):
    if number == _TRAINER_SPEC and wire == 2:
      spec = raw[len(_varint_bytes(number << 3 | 2)) :]
      spec = spec[len(_varint_bytes(_varint(spec, 0)[0])) :]
      kept = b"".join(r for n, _, r in _raw_fields(spec) if n != _MODEL_PREFIX)
      raw = _bytes_field(number, kept + _bytes_field(_MODEL_PREFIX, prefix.encode("utf-8")))
    out += raw
  return bytes(out)


def _model_prefix_of(model_proto: bytes) -> str:
  for number, wire, value in _proto_fields(model_proto):
    if number == _TRAINER_SPEC and wire == 2:
      for inner, inner_wire, inner_value in _proto_fields(value):
        if inner == _MODEL_PREFIX and inner_wire == 2:
          return inner_value.decode("utf-8")
  return ""


def normalizer_of(model_proto: bytes) -> str:
  """The name of the normaliser a serialized model was trained with (and must be run with)."""
  model_type = model_type_of(model_proto)
  if model_type == "word" and _model_prefix_of(model_proto) == ORIGINAL_WORD_NORMALIZER_NAME:
    return ORIGINAL_WORD_NORMALIZER_NAME
  return normalizer_name(model_type)


def model_type_of(model_proto: bytes) -> str:
  """The model type (unigram, bpe, word, char) stored in a serialized SentencePiece ModelProto.

  Read from the wire format (ModelProto.trainer_spec = 2, TrainerSpec.model_type = 3), because the
  pb2 module shipped with sentencepiece needs a newer protobuf runtime than TensorFlow's.
  """
  names = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
  for number, wire, value in _proto_fields(model_proto):
    if number == 2 and wire == 2:
      for inner, inner_wire, inner_value in _proto_fields(value):
        if inner == 3 and inner_wire == 0:
          return names[inner_value]
  return "unigram"  # the proto's default


def train_sentencepiece(
  texts: Iterable[str],
  *,
  vocab_size: int = 8000,
  model_type: str = "unigram",
  character_coverage: float = 1.0,
  byte_fallback: bool = True,
  input_sentence_size: int = 0,
  num_threads: int | None = None,
  word_normalizer: str = "plain",
) -> bytes:
  """Trains a SentencePiece model in memory on normalised texts; returns the serialized model proto.

  Ids follow the contract (PAD 0, UNK 1, BOS 2, EOS 3, '[MASK]' 4). `byte_fallback` spells
  characters unseen in training as UTF-8 bytes instead of UNK, so decode(encode(x)) ==
  normalize_text(x) always. The vocabulary limit is soft: a small corpus may yield fewer pieces than
  `vocab_size`. `input_sentence_size` > 0 trains on that many randomly sampled texts (for very large
  corpora). `model_type="word"` keeps the `vocab_size` - 5 most frequent words of the texts with
  their punctuation dropped; there is no byte fallback (an unseen word is UNK) and '[MASK]' is a
  control symbol (never matched in text). `word_normalizer` (word models): "plain" (the above) or
  "original" (the release's rule, `normalize_original_words`), recorded in the model.
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
  words = model_type == "word"
  if word_normalizer != "plain" and not words:
    raise ValueError(f"word_normalizer={word_normalizer!r} needs model_type='word'")
  normalizer = normalizer_name(model_type, word_normalizer)
  # Word models: no byte pieces (SentencePiece refuses them), and no '▁[MASK]' word either.
  symbols = {"control_symbols": [MASK_PIECE]} if words else {"user_defined_symbols": [MASK_PIECE]}

  def normalised_nonempty() -> Iterator[str]:
    for text in texts:
      text = normalize_for(normalizer, text)
      if text:
        yield text

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=normalised_nonempty(),
    model_writer=model,
    vocab_size=vocab_size,
    model_type=model_type,
    character_coverage=character_coverage,
    byte_fallback=byte_fallback and not words,
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    **symbols,
    # Our normaliser already did the work; SentencePiece must not alter the text further, or the
    # decoded text would differ from normalize_text(x).
    normalization_rule_name="identity",
    remove_extra_whitespaces=True,
    hard_vocab_limit=False,
    max_sentence_length=1 << 16,
    input_sentence_size=input_sentence_size,
    shuffle_input_sentence=input_sentence_size > 0,
    num_threads=num_threads or os.cpu_count() or 1,
    minloglevel=2,
  )
  if normalizer == ORIGINAL_WORD_NORMALIZER_NAME:
    return _with_model_prefix(model.getvalue(), normalizer)
  return model.getvalue()


class Tokenizer:
  """A trained SentencePiece model plus the fixed sequence length; tokenizes in-graph and
  eagerly."""

  def __init__(self, model_proto: bytes, max_len: int = 160):
    if max_len < 2:
      raise ValueError(f"max_len must leave room for [BOS] and [EOS], got {max_len}")
    self._model_proto = bytes(model_proto)
    self.max_len = int(max_len)
    self._processor = spm.SentencePieceProcessor(model_proto=self._model_proto)
    expected = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "mask": MASK_ID}
    actual = {
      "pad": self._processor.pad_id(),
      "unk": self._processor.unk_id(),
      "bos": self._processor.bos_id(),
      "eos": self._processor.eos_id(),
      "mask": self._processor.piece_to_id(MASK_PIECE),
    }
    if actual != expected:
      raise ValueError(f"SentencePiece model ids {actual} differ from the contract {expected}")
    self.model_type = model_type_of(self._model_proto)
    self.normalizer = normalizer_of(self._model_proto)
    self._graph_tokenizer = tf_text.SentencepieceTokenizer(
      model=self._model_proto, out_type=tf.int32, add_bos=False, add_eos=False
    )

  # --- construction and persistence -------------------------------------------------------------

  @classmethod
  def train(cls, texts: Iterable[str], *, max_len: int = 160, **train_kwargs) -> Tokenizer:
    """Trains a model on `texts` (see `train_sentencepiece` for the keyword arguments)."""
    return cls(train_sentencepiece(texts, **train_kwargs), max_len=max_len)

  def save(self, directory: str | os.PathLike) -> str:
    """Writes `spm.model` and `tokenizer.json` (max_len, ids, normaliser) into `directory`.

    Paths go through tf.io.gfile, so the directory may be local or on GCS (gs://...).
    """
    directory = os.fspath(directory)
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, MODEL_FILENAME), "wb") as f:
      f.write(self._model_proto)
    config = {
      "max_len": self.max_len,
      "vocab_size": self.vocab_size,
      "pad_id": PAD_ID,
      "unk_id": UNK_ID,
      "bos_id": BOS_ID,
      "eos_id": EOS_ID,
      "mask_id": MASK_ID,
      "model_type": self.model_type,
      "normalizer": self.normalizer,
    }
    with tf.io.gfile.GFile(os.path.join(directory, CONFIG_FILENAME), "w") as f:
      f.write(json.dumps(config, indent=2) + "\n")
    return directory

  @classmethod
  def load(cls, directory: str | os.PathLike) -> Tokenizer:
    """Reads a tokenizer written by `save`; refuses one made with a different normaliser."""
    directory = os.fspath(directory)
    with tf.io.gfile.GFile(os.path.join(directory, CONFIG_FILENAME)) as f:
      config = json.loads(f.read())
    with tf.io.gfile.GFile(os.path.join(directory, MODEL_FILENAME), "rb") as f:
      tokenizer = cls(f.read(), max_len=config["max_len"])
    expected = tokenizer.normalizer
    if config.get("normalizer") != expected:
      raise ValueError(
        f"{directory} was saved with normaliser {config.get('normalizer')!r}; "
        f"this code implements {expected!r} for {tokenizer.model_type} models"
      )
    if tokenizer.vocab_size != config["vocab_size"]:
      raise ValueError(
        f"{directory}: model vocab {tokenizer.vocab_size} != json {config['vocab_size']}"
      )
    return tokenizer

  # --- properties --------------------------------------------------------------------------------

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model."""
    return self._model_proto

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ones included."""
    return self._processor.get_piece_size()

  pad_id = PAD_ID
  unk_id = UNK_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  mask_id = MASK_ID
  first_ordinary_id = FIRST_ORDINARY_ID

  def id_to_piece(self, token_id: int) -> str:
    """The vocabulary piece of one id (for inspection and debugging)."""
    return self._processor.id_to_piece(int(token_id))

  # --- tokenizing --------------------------------------------------------------------------------

  def tokenize(self, texts: tf.Tensor | str | Sequence[str]) -> tf.Tensor:
    """In-graph: strings of shape [] or [N] -> int32 [L] or [N, L] (usable inside tf.data maps)."""
    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    if texts.shape.rank not in (0, 1):
      raise ValueError(f"tokenize takes a scalar or a vector of strings, got shape {texts.shape}")
    is_scalar = texts.shape.rank == 0
    batch = tf.reshape(texts, [-1])
    normalised = normalize_for_tf(self.normalizer, batch)
    if self.model_type == "word":
      # Word by word: SentencePiece merges a run of unknown words into one UNK; here each is one.
      pieces = self._graph_tokenizer.tokenize(tf.strings.split(normalised)).merge_dims(1, 2)
    else:
      pieces = self._graph_tokenizer.tokenize(normalised)
    pieces = pieces[:, : self.max_len - 2]
    rows = tf.shape(batch, out_type=tf.int64)[0]
    bos = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([rows, 1]), tf.constant(BOS_ID, tf.int32)))
    eos = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([rows, 1]), tf.constant(EOS_ID, tf.int32)))
    ids = tf.concat([bos, tf.cast(pieces, tf.int32), eos], axis=1)
    ids = ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_len])
    return ids[0] if is_scalar else ids

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Eager: a list of strings -> int32 [N, L], identical to `tokenize`."""
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of strings; wrap a single text in a list")
    out = np.full((len(texts), self.max_len), PAD_ID, dtype=np.int32)
    for row, text in enumerate(texts):
      text = normalize_for(self.normalizer, text)
      if self.model_type == "word":
        pieces = [i for word in self._processor.encode(text.split(), out_type=int) for i in word]
      else:
        pieces = self._processor.encode(text, out_type=int)
      pieces = pieces[: self.max_len - 2]
      ids = [BOS_ID, *pieces, EOS_ID]
      out[row, : len(ids)] = ids
    return out

  def decode(self, ids: np.ndarray | Sequence[int] | Sequence[Sequence[int]]) -> list[str]:
    """Ids [L] or [N, L] -> texts: reads after [BOS] up to the first [EOS], skips [PAD]."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2:
      raise ValueError(f"decode takes ids of shape [L] or [N, L], got {ids.shape}")
    texts = []
    for row in ids.tolist():
      if row and row[0] == BOS_ID:
        row = row[1:]
      if EOS_ID in row:
        row = row[: row.index(EOS_ID)]
      texts.append(self._processor.decode([i for i in row if i != PAD_ID]))
    return texts


# --- command line
#   ----------------------------------------------------------------------------------


def read_texts(spec: str) -> list[str]:
  """Reads reports from 'file.txt' (one per line) or 'file.csv[:col1+col2]' (columns joined by a
  space).

  A CSV without a column spec uses its 'text' column. Empty reports are dropped.
  """
  path, columns = spec, None
  if ":" in spec:
    head, tail = spec.rsplit(":", 1)
    if tail and "/" not in tail and os.sep not in tail:
      path, columns = head, tail.split("+")
  path = Path(path)
  if path.suffix.lower() == ".csv":
    with path.open(newline="", encoding="utf-8") as handle:
      reader = csv.DictReader(handle)
      columns = columns or ["text"]
      missing = [c for c in columns if c not in (reader.fieldnames or [])]
      if missing:
        raise ValueError(f"{path}: no column(s) {missing}; columns are {reader.fieldnames}")
      texts = [" ".join((row[c] or "").strip() for c in columns).strip() for row in reader]
  else:
    if columns:
      raise ValueError(f"{path}: column spec {columns} given for a non-CSV file")
    texts = path.read_text(encoding="utf-8").splitlines()
  return [t for t in texts if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
  """Trains a tokenizer from report files and saves it to --out."""
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--texts",
    action="append",
    required=True,
    help="FILE.txt (one report per line) or FILE.csv[:col1+col2]; repeat to combine",
  )
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--model_type", choices=MODEL_TYPES, default="unigram")
  parser.add_argument(
    "--word_normalizer",
    choices=sorted(WORD_NORMALIZERS),
    default="plain",
    help="word models: plain (punctuation dropped) or original (the release's rule)",
  )
  parser.add_argument("--character_coverage", type=float, default=1.0)
  parser.add_argument(
    "--no_byte_fallback",
    action="store_true",
    help="map unseen characters to UNK instead of spelling them as bytes",
  )
  parser.add_argument(
    "--input_sentence_size", type=int, default=0, help="train on this many sampled reports (0: all)"
  )
  parser.add_argument("--max_len", type=int, default=160)
  parser.add_argument(
    "--out", required=True, help="directory to write spm.model and tokenizer.json"
  )
  args = parser.parse_args(argv)

  texts = [text for spec in args.texts for text in read_texts(spec)]
  tokenizer = Tokenizer.train(
    texts,
    max_len=args.max_len,
    vocab_size=args.vocab_size,
    model_type=args.model_type,
    character_coverage=args.character_coverage,
    byte_fallback=not args.no_byte_fallback,
    input_sentence_size=args.input_sentence_size,
    word_normalizer=args.word_normalizer,
  )
  out = tokenizer.save(args.out)
  lengths = (tokenizer.encode(texts) != PAD_ID).sum(axis=1)
  truncated = int((lengths == tokenizer.max_len).sum())
  print(
    f"trained on {len(texts)} reports: vocab {tokenizer.vocab_size}, tokens/report "
    f"median {int(np.median(lengths))} max {int(lengths.max())}, "
    f"{truncated} fill max_len {tokenizer.max_len} (possibly truncated); saved to {out}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
