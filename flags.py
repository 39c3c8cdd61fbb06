"""
Command-line flags from a dataclass: each field carries its help text and the rule its value must
obey (`arg`), and every value is checked by its rule before anything is read or written
(`parse_flags`): a bad value stops the program with one line naming the flag, the value and what
is allowed. Used by every script (ssft.py, gfpo.py, eval.py, plan.py); a problem with what the user
gave is a `UserError`, shown as that one line without a traceback.

    python -m pytest -q test_flags.py
"""
import argparse
import contextlib
import math
import sys
import tempfile
from dataclasses import field, fields
from pathlib import Path

from data.synthetic import TASKS
from model import PRESETS


class UserError(Exception):
    """A problem with what the user gave (a flag, a file): shown as one line, without traceback."""


@contextlib.contextmanager
def user_input():
    """Read the user's files: what goes wrong there (ValueError, OSError: a corrupt checkpoint, a
    missing tokenizer) is the input's fault, reported as a UserError naming the file."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None


def arg(default, help, *, low=None, above=None, high=None, below=None, choices=None, kind=None):
    """A dataclass field that is also a flag. low/high: inclusive bounds, above/below: exclusive;
    kind: 'model' (a preset, a HF directory or a run directory), 'checkpoint' (the same but no
    preset), 'data' ('synthetic' or a file), 'file' (optional), 'out' (a writable directory)."""
    rule = dict(low=low, above=above, high=high, below=below, choices=choices, kind=kind)
    return field(default=default, metadata={"help": help, **rule})


def check_value(f, value):
    """The reason `value` breaks the rule of field `f`, or None."""
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        return f"must be one of {', '.join(map(str, m['choices']))}"
    for key, ok, words in (("low", value.__ge__, "at least"), ("above", value.__gt__, "more than"),
                           ("high", value.__le__, "at most"), ("below", value.__lt__, "less than")):
        if m.get(key) is not None and not (isinstance(value, (int, float)) and ok(m[key]) is True
                                            and math.isfinite(value)):
            return f"must be {words} {m[key]}"
    kind, path = m.get("kind"), Path(str(value))
    if kind in ("model", "checkpoint") and not (kind == "model" and value in PRESETS) \
            and not (model_dir(path) / "config.json").is_file():
        return ((f"is neither a preset ({', '.join(PRESETS)}) nor " if kind == "model" else "is not ")
                + "a model directory (config.json) or a run directory with model/"
                + (" (has its training finished?)" if (path / "checkpoint").is_dir() else ""))
    if kind == "data" and value not in TASKS and not path.is_file():
        return f"must be {', '.join(map(repr, TASKS))} or an existing file"
    if kind == "file" and value and not path.is_file():
        return "must be an existing file"
    if kind == "out":
        if path.exists() and not path.is_dir():
            return "names a file; it must be a directory (new or existing)"
        parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
        try:  # a real write, since permission bits do not bind root
            tempfile.TemporaryFile(dir=parent).close()
        except OSError as e:
            return f"cannot be written ({parent}: {e.strerror})"
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other input error here
        sys.exit(f"error: {message}")


def parse_flags(cls, argv=None, description=""):
    """(config, names of the flags given on the command line), every value checked by its rule."""
    p = _Parser(description=description)
    for f in fields(cls):
        flag, helptext = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default: {f.default})"
        # SUPPRESS: a flag that is not given is absent from the result, so `given` is exact.
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helptext)
        else:
            p.add_argument(flag, type=type(f.default), default=argparse.SUPPRESS, help=helptext)
    given = vars(p.parse_args(argv))
    cfg = cls(**given)
    check_flags(cfg, given if getattr(cfg, "resume", False) else None)  # resumed: Run checks the rest
    return cfg, set(given)


def check_flags(cfg, only=None):
    for f in fields(cfg):
        if (only is None or f.name in only) and (reason := check_value(f, getattr(cfg, f.name))) is not None:
            raise UserError(f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}: {reason}")


def model_dir(path):
    """The HF model directory of --model: the directory itself, or a run directory's model/."""
    path = Path(path)
    return path / "model" if not (path / "config.json").exists() and (path / "model" / "config.json").exists() \
        else path
