"""Back XLA:CPU's buffers with transparent huge pages: re-exec the program with glibc's
`glibc.malloc.hugetlb=1` tunable where the kernel gives huge pages only on request.

XLA:CPU allocates each step's temporaries afresh with malloc; glibc serves large blocks with a new
mmap and returns them on free, so every step faults its working set in again, 4 KiB at a time
(53 million minor faults in one paper-config benchmark run). With THP in `madvise` mode (the
Debian / Ubuntu default) that costs 30% of an image-text step at 1024 px on the 2-core machine;
the tunable makes glibc ask for 2 MiB pages (README, "The train step on this CPU"). It changes no
value: only how memory is mapped. glibc reads tunables at start-up only, hence the re-exec.

Set `JIMTE_HUGEPAGE_MALLOC=0` to keep the process as started (e.g. to time the difference).
`python -m jimte.hugepages` prints the `GLIBC_TUNABLES` value a program would re-exec with (the
current one where no re-exec applies), for scripts that start other programs (scripts/test.sh).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT_ENV = "JIMTE_HUGEPAGE_MALLOC"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable


def thp_mode(mode_file: Path = THP_MODE_FILE) -> str:
  """The kernel's THP mode ("always", "madvise", "never"), "" where the file is absent."""
  try:
    text = mode_file.read_text()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else ""


def glibc_version() -> tuple[int, ...]:
  """glibc's (major, minor), () when the C library is not glibc."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (ValueError, OSError, AttributeError):
    return ()
  if name != "glibc":
    return ()
  return tuple(int(part) for part in version.split(".")[:2])


def with_hugepage_tunable(tunables: str) -> str:
  """`GLIBC_TUNABLES` with `glibc.malloc.hugetlb=1` added; a value the user set is kept."""
  entries = [entry for entry in tunables.split(":") if entry]
  if any(entry.split("=")[0] == TUNABLE for entry in entries):
    return tunables
  return ":".join([*entries, f"{TUNABLE}=1"])


def needs_reexec(environ=os.environ, mode: str | None = None, glibc=None) -> bool:
  """Whether re-executing with the tunable would change how this process maps memory."""
  if environ.get(OPT_OUT_ENV, "1") == "0":
    return False
  current = environ.get("GLIBC_TUNABLES", "")
  if with_hugepage_tunable(current) == current:
    return False  # already set, by us or by the user
  glibc = glibc_version() if glibc is None else glibc
  if not glibc or glibc < MIN_GLIBC:
    return False
  return (thp_mode() if mode is None else mode) == "madvise"


def reexec_with_hugepages() -> None:
  """Replace this process with the same command line plus the tunable, where it matters.

  Call it first thing in a program's entry point (never from a library function: it replaces the
  process). The pid, stdio and arguments stay the same, so launchers and pods see one process.
  """
  if not needs_reexec():
    return
  os.environ["GLIBC_TUNABLES"] = with_hugepage_tunable(os.environ.get("GLIBC_TUNABLES", ""))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def tunables_for_children(environ=os.environ) -> str:
  """`GLIBC_TUNABLES` for processes started from here: with the tunable where it applies."""
  current = environ.get("GLIBC_TUNABLES", "")
  return with_hugepage_tunable(current) if needs_reexec(environ) else current


if __name__ == "__main__":
  print(tunables_for_children())
