"""The huge-page re-exec (jimte.hugepages): the tunable's merging, when it applies, and a real
re-exec whose large malloc blocks come back as transparent huge pages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jimte import hugepages

REPO = Path(__file__).resolve().parents[1]


def test_tunable_is_added_once_and_a_users_value_kept():
  assert hugepages.with_hugepage_tunable("") == "glibc.malloc.hugetlb=1"
  assert (
    hugepages.with_hugepage_tunable("glibc.malloc.arena_max=2")
    == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  )
  assert hugepages.with_hugepage_tunable("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
  once = hugepages.with_hugepage_tunable("a=1")
  assert hugepages.with_hugepage_tunable(once) == once


@pytest.mark.parametrize(
  "environ, mode, glibc, expected",
  [
    ({}, "madvise", (2, 36), True),
    ({}, "always", (2, 36), False),  # the kernel already backs large blocks with huge pages
    ({}, "never", (2, 36), False),
    ({}, "", (2, 36), False),  # no THP at all
    ({}, "madvise", (2, 31), False),  # glibc without the tunable
    ({}, "madvise", (), False),  # not glibc
    ({"JIMTE_HUGEPAGE_MALLOC": "0"}, "madvise", (2, 36), False),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", (2, 36), False),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", (2, 36), True),
  ],
)
def test_needs_reexec(environ, mode, glibc, expected):
  assert hugepages.needs_reexec(environ, mode=mode, glibc=glibc) is expected


def test_children_get_the_tunable_only_where_a_reexec_would_apply(monkeypatch):
  monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
  monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
  assert hugepages.tunables_for_children({"GLIBC_TUNABLES": "a=1"}) == "a=1:glibc.malloc.hugetlb=1"
  off = {"GLIBC_TUNABLES": "a=1", "JIMTE_HUGEPAGE_MALLOC": "0"}
  assert hugepages.tunables_for_children(off) == "a=1"
  monkeypatch.setattr(hugepages, "thp_mode", lambda: "always")
  assert hugepages.tunables_for_children({}) == ""


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  mode_file = tmp_path / "enabled"
  mode_file.write_text("always [madvise] never\n")
  assert hugepages.thp_mode(mode_file) == "madvise"
  assert hugepages.thp_mode(tmp_path / "absent") == ""


PROBE = textwrap.dedent(
  """
  import ctypes, os, sys
  sys.path.insert(0, {repo!r})
  print("before", os.getpid(), flush=True)
  from jimte import hugepages
  hugepages.reexec_with_hugepages()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  size = 64 << 20
  block = libc.malloc(ctypes.c_size_t(size))
  ctypes.memset(block, 1, size)
  with open("/proc/self/smaps_rollup") as f:
    huge_kb = [int(l.split()[1]) for l in f if l.startswith("AnonHugePages:")][0]
  print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), huge_kb, sys.argv[1:])
  """
)


def run_probe(tmp_path, env_extra):
  probe = tmp_path / "probe.py"
  probe.write_text(PROBE.format(repo=str(REPO)))
  env = {
    k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JIMTE_HUGEPAGE_MALLOC")
  }
  env.update(env_extra)
  result = subprocess.run(
    [sys.executable, str(probe), "--flag", "x y"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  return [line.split(maxsplit=4) for line in result.stdout.splitlines()]


@pytest.mark.skipif(
  hugepages.thp_mode() != "madvise" or hugepages.glibc_version() < hugepages.MIN_GLIBC,
  reason="the re-exec applies only to glibc >= 2.35 with THP in madvise mode",
)
def test_reexec_keeps_pid_and_arguments_and_gives_huge_pages(tmp_path):
  lines = run_probe(tmp_path, {})
  assert [line[0] for line in lines] == ["before", "before", "after"]  # ran twice: re-executed
  assert len({line[1] for line in lines}) == 1  # one process throughout
  _, _, tunables, huge_kb, argv = lines[-1]
  assert tunables == "glibc.malloc.hugetlb=1"
  assert int(huge_kb) >= 32 * 1024  # most of the 64 MiB block is in 2 MiB pages
  assert argv == "['--flag', 'x y']"

  lines = run_probe(tmp_path, {"JIMTE_HUGEPAGE_MALLOC": "0"})
  assert [line[0] for line in lines] == ["before", "after"]  # opted out: not re-executed
