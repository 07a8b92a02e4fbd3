"""jimte.retrieve and the `jimte` command: top-K of an export against brute-force numpy, a query by
exported id through `python -m jimte.cli retrieve`, and the CLI's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jimte import export, retrieve, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = dict(
  model_name="tiny", step=3, config_hash="0123456789abcdef", tokenizer="t", kind="text"
)


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((40, 8)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  ids = [f"s{i:02d}" for i in range(40)]
  rows = [dict(id=ids, embedding=emb, report=[f"report of {i}" for i in ids])]
  out = str(tmp_path_factory.mktemp("exp") / "reports")
  export.write_rows(out, rows, settings=dict(MANIFEST), manifest=MANIFEST, part_size=16)
  return out, ids, emb


def cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "jimte.cli", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    check=False,
  )


def test_top_k_equals_numpy(text_export):
  path, ids, emb = text_export
  index = export.read_export(path)
  rng = np.random.default_rng(1)
  queries = rng.standard_normal((3, 8)).astype(np.float32)
  hits = retrieve.top_k(index, queries, 5)
  want = np.argsort(-(queries @ emb.T), axis=1, kind="stable")[:, :5]
  for q, q_hits in enumerate(hits):
    assert [h.id for h in q_hits] == [ids[j] for j in want[q]]
    np.testing.assert_allclose([h.score for h in q_hits], (queries @ emb.T)[q, want[q]], rtol=1e-5)
    assert q_hits[0].report == f"report of {ids[want[q][0]]}"


def test_query_by_id_through_cli(text_export):
  path, ids, emb = text_export
  proc = cli("retrieve", "--index", path, "--id", "s07", "--k", "4", "--json")
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout)
  assert result["direction"] == "text→text"
  scores = emb @ emb[7]
  scores[7] = -np.inf  # the query itself is left out
  want = np.argsort(-scores, kind="stable")[:4]
  assert [h["id"] for h in result["hits"]] == [ids[j] for j in want]
  assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4]


def test_cli_refusals(text_export, tmp_path):
  path = text_export[0]
  proc = cli("retrieve", "--index", path, "--id", "nope")
  assert proc.returncode == 2 and "'nope' is not in the export" in proc.stderr
  proc = cli("retrieve", "--index", str(tmp_path), "--id", "s01")
  assert proc.returncode == 2 and "not a finished export" in proc.stderr
  proc = cli("retrieve", "--index", path, "--text", "effusion")
  assert proc.returncode == 2 and "--workdir" in proc.stderr
  proc = cli("frobnicate")
  assert proc.returncode == 2 and "unknown subcommand 'frobnicate'" in proc.stderr
  proc = cli("--help")
  assert proc.returncode == 0 and "retrieve" in proc.stdout


def test_index_of_other_model_refused(text_export):
  manifest = export.read_export(text_export[0]).manifest
  other = search.IndexIdentity("tiny", "ffffffffffffffff", 8)
  with pytest.raises(search.IndexMismatchError, match="reports.*config hash"):
    search.check_compatible(retrieve.identity_of(manifest), other, index_name=text_export[0])


def test_text_query_with_model(trained_workdir, text_export, tmp_path):
  """A text query through the model: refused against another model's export (by name), and
  text→text top-K equal to brute force against the model's own CSV export."""
  proc = cli("retrieve", "--index", text_export[0], "--workdir", trained_workdir, "--text", "x")
  assert proc.returncode == 2 and text_export[0] in proc.stderr and "8-dim" in proc.stderr
  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(trained_workdir)
  texts = ["no acute findings.", "small left pleural effusion.", "cardiomegaly.", "clear lungs."]
  csv_path = tmp_path / "r.csv"
  csv_path.write_text("id,report\n" + "".join(f"c{i},{t}\n" for i, t in enumerate(texts)))
  out = str(tmp_path / "exp")
  export.export_csv(model, str(csv_path), out)
  proc = cli(
    "retrieve",
    "--index",
    out,
    "--workdir",
    trained_workdir,
    "--text",
    "left pleural effusion.",
    "--k",
    "3",
    "--json",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout)
  assert result["direction"] == "text→text"
  emb = model.encode_reports(texts).embeddings
  query = model.encode_reports(["left pleural effusion."]).embeddings[0]
  want = np.argsort(-(emb @ query), kind="stable")[:3]
  assert [h["id"] for h in result["hits"]] == [f"c{j}" for j in want]
  assert [h["report"] for h in result["hits"]] == [texts[j] for j in want]


def test_image_query_through_cli(trained_workdir, tmp_path):
  """An image file as the query against an image export: image→image, the same file first with
  score 1, the order equal to brute force; an unreadable query file is refused by name."""
  from PIL import Image

  from jimte.inference import JimteModel

  folder = tmp_path / "xrays"
  folder.mkdir()
  rng = np.random.default_rng(3)
  names = [f"x{i}.png" for i in range(5)]
  for i, name in enumerate(names):
    Image.fromarray((rng.random((40, 36 + 2 * i)) * 255).astype(np.uint8)).save(folder / name)
  model = JimteModel.from_workdir(trained_workdir)
  out = str(tmp_path / "exp")
  export.export_folder(model, str(folder), out)
  query = str(folder / "x2.png")
  args = ("retrieve", "--index", out, "--workdir", trained_workdir, "--k", "3", "--json")
  proc = cli(*args, "--image", query)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout)
  assert result["direction"] == "image→image"
  emb = model.encode_images([str(folder / n) for n in names]).embeddings
  scores = emb @ emb[2]
  want = np.argsort(-scores, kind="stable")[:3]
  assert [h["id"] for h in result["hits"]] == [names[j] for j in want]
  assert result["hits"][0]["id"] == "x2.png"
  assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  proc = cli(*args, "--image", str(broken))
  assert proc.returncode == 2 and "broken.png" in proc.stderr
