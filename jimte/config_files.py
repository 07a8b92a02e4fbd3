"""Config files given by path, `NAME.py[:arg]`: the file's `get_config(arg)` (prompt sets, prompt
templates), one reader for every such file so the path convention and its errors are the same."""

from __future__ import annotations

import importlib.util
import os


def split_path(path: str) -> tuple[str, str]:
  """`NAME.py:arg` -> (`NAME.py`, `arg`); a path without an argument -> (path, '')."""
  if ".py:" in path:
    file, _, arg = path.partition(".py:")
    return file + ".py", arg
  return path, ""


def call_get_config(file: str, arg: str, module_name: str):
  """The value of `get_config(arg or None)` of the Python file `file` (errors name the file)."""
  spec = importlib.util.spec_from_file_location(module_name, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{file}: defines no get_config(arg)")
  return module.get_config(arg or None)


def exists_or_raise(file: str, what: str) -> None:
  """A FileNotFoundError naming `what` and `file` unless the file exists."""
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{what} file {file} does not exist")
