"""
flags.py: every rule a flag can carry, on a dataclass of its own and through the scripts' command
lines (a bad value stops with one line naming the flag, before anything is written); `given` lists
exactly the flags on the command line; a run directory's model/ is found.

    python -m pytest -q test_flags.py
"""
from dataclasses import dataclass

import pytest

from conftest import TINY_RUN, one_line_error, ssft_cli
from flags import UserError, arg, model_dir, parse_flags


@dataclass
class Toy:
    n: int = arg(3, "a count", low=1)
    rate: float = arg(0.5, "a rate", above=0, below=1)
    top: float = arg(1.0, "a bound", high=1)
    kind: str = arg("a", "a choice", choices=("a", "b"))
    on: bool = arg(False, "a switch")
    data: str = arg("synthetic", "data", kind="data")
    out: str = arg("out/x", "a directory", kind="out")


def test_defaults_and_given():
    cfg, given = parse_flags(Toy, [])
    assert (cfg.n, cfg.rate, cfg.on, given) == (3, 0.5, False, set())
    cfg, given = parse_flags(Toy, ["--n", "3", "--on", "--kind", "b"])
    assert (cfg.n, cfg.on, cfg.kind, given) == (3, True, "b", {"n", "on", "kind"})  # given even when equal
    assert parse_flags(Toy, ["--no-on"])[0].on is False


@pytest.mark.parametrize("argv,message", [
    (["--n", "0"], "--n 0: must be at least 1"),
    (["--rate", "0"], "--rate 0.0: must be more than 0"),
    (["--rate", "1"], "--rate 1.0: must be less than 1"),
    (["--rate", "inf"], "--rate inf: must be more than 0"),
    (["--rate", "nan"], "--rate nan: must be more than 0"),
    (["--top", "1.5"], "--top 1.5: must be at most 1"),
    (["--kind", "c"], "--kind c: must be one of a, b"),
    (["--data", "missing.jsonl"], "--data missing.jsonl: must be 'synthetic', 'synthetic-short' or an existing file"),
])
def test_each_rule(argv, message):
    with pytest.raises(UserError) as e:
        parse_flags(Toy, argv)
    assert str(e.value) == message


def test_both_synthetic_tasks_are_data_for_every_script(tmp_path):
    import eval as ev
    import gfpo
    import ssft
    (tmp_path / "config.json").write_text("{}")
    for config in (ssft.SSFTConfig, gfpo.GFPOConfig, ev.EvalConfig):
        for data in ("synthetic", "synthetic-short"):
            assert parse_flags(config, ["--data", data, "--model", str(tmp_path)])[0].data == data


def test_model_dir_finds_a_run_directory_s_model(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    assert model_dir(tmp_path / "run") == tmp_path / "run" / "model"
    assert model_dir(tmp_path / "run" / "model") == tmp_path / "run" / "model"
    assert model_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--steps", "-5"], "--steps -5: must be at least 1"),
    (["--save-every", "-1"], "--save-every -1: must be at least 0"),
    (["--batch", "0"], "--batch 0: must be at least 1"),
    (["--batch", "-8"], "--batch -8: must be at least 1"),
    (["--match-tokens", "0"], "--match-tokens 0: must be at least 1"),
    (["--traces", "0"], "--traces 0: must be at least 1"),
    (["--traces", "5"], "--traces 5: the synthetic task has 4 traces per question"),
    (["--lr", "-1"], "--lr -1.0: must be more than 0"),
    (["--lr", "nan"], "--lr nan: must be more than 0"),
    (["--warmup", "1"], "--warmup 1.0: must be less than 1"),
    (["--train-questions", "0"], "--train-questions 0: must be at least 1"),
    (["--train-questions", "4"], "--batch 8: must be at most the 4 questions"),
    (["--max-len", "5"], "--max-len 5: must be at least"),
    (["--num-tags", "3"], "--num-tags 3: fewer than the 4 traces of a question"),
    (["--mode", "best"], "--mode best: must be one of ssft, random, mixed"),
    (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["--model", "nowhere"], "--model nowhere: is neither a preset"),
    (["--data", "nowhere.jsonl"], "--data nowhere.jsonl: must be 'synthetic', 'synthetic-short' or an existing file"),
    (["--tokenizer", "nowhere.json"], "--tokenizer nowhere.json: must be an existing file"),
    (["--out", "/sys/kernel/run"], "--out /sys/kernel/run: cannot be written"),
])
def test_bad_flags_stop_before_anything_is_written(args, message, tmp_path):
    out = tmp_path / "out"
    one_line_error(ssft_cli(TINY_RUN + ["--steps", "3", "--out", str(out), *args]), message)
    assert not out.exists()


def test_out_naming_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(ssft_cli(TINY_RUN + ["--out", str(tmp_path / "f")]), "names a file")
