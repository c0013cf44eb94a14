"""User errors of the `stldec` CLI: one line `stldec <command>: error: ...` naming the file, line or flag, exit
status 2, before any work; `stldec --debug` shows the traceback; internal errors keep theirs. Also --version and
the defaults in --help."""

import re
import subprocess
import sys

import pytest
import torch
import yaml

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.cli import main
from stldec.data import load_formulae
from stldec.stl import FormulaGenerator, StlKernelEncoder
from stldec.stl.kernel import read_formula_file

GOOD = "eventually[8,22] ( x_2 >= 1.4363 )"
BAD = "always ( x_0 >= 0.2 and )"
# file content -> what the one-line message says (the pandas reader of `stldec embed` and the `datasets` reader of
# decode/evaluate/train must say the same)
TABLES = {
    "bad_formula.csv": (f'formula\n"{GOOD}"\n"{BAD}"\n',
                        f"bad_formula.csv, line 3: formula '{BAD}', character 25: expected a formula"),
    "unquoted_comma.csv": (f'formula\n"{GOOD}"\neventually[0,3] ( x_0 >= 1 )\n',
                           "unquoted_comma.csv, line 3: 2 fields but the header has 1 (formula); quote a formula"),
    "first_row_unquoted.csv": ("formula\neventually[0,3] ( x_0 >= 1 )\nx_1 <= 0.2\n",
                               "first_row_unquoted.csv, line 2: 2 fields but the header has 1"),
    "empty.csv": ("", "empty.csv is empty"),
    "header_only.csv": ("formula,depth\n", "header_only.csv has no rows (only the header line)"),
    "empty_cell.csv": (f'formula,depth\n"{GOOD}",1\n,2\n', "empty_cell.csv, line 3: empty formula cell"),
    "null.jsonl": (f'{{"formula": "{GOOD}"}}\n{{"formula": null}}\n', "null.jsonl, line 2: empty formula cell"),
    "broken.jsonl": (f'{{"formula": "{GOOD}"}}\n{{"formula": "x_0 >= 1"\n', "broken.jsonl, line 2: not a JSON object"),
    "bad_formula.jsonl": (f'{{"formula": "{GOOD}"}}\n{{"formula": "x_0 >= "}}\n',
                          "bad_formula.jsonl, line 2: formula 'x_0 >= ', character 8: expected a number"),
}


def fails(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error: exit status 2 and a last stderr line `stldec <command>: error: ...`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"stldec {argv[0]}: error: "), line
    return line


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    gen = FormulaGenerator("random", seed=1, n_points=30)
    encoder = StlKernelEncoder(gen.sample(8), n_trajectories=100, n_points=30)
    torch.manual_seed(0)
    model = StlDecForCausalLM(StlDecConfig.from_preset("tiny", max_position_embeddings=48, embedding_dim=8))
    model.save_pretrained(root / "model")
    StlTokenizer().save_pretrained(root / "model")
    encoder.save_pretrained(root / "model" / "encoder")
    encoder.save_pretrained(root / "encoder")
    (root / "test.csv").write_text(f'formula\n"{GOOD}"\n')
    for name, (content, _) in TABLES.items():
        (root / name).write_text(content)
    return root


@pytest.mark.parametrize("name", TABLES)
def test_bad_input_tables_name_the_file_and_line(root, name, capsys):
    want = TABLES[name][1]
    # `stldec embed` reads tables with pandas (the encoder, missing here, would load after the check)
    assert want in fails(["embed", "--in", str(root / name), "--out", str(root / "out.csv"), "--encoder",
                          str(root / "missing_encoder")], capsys)
    with pytest.raises(ValueError, match="^" + re.escape(str(root / want))):
        load_formulae(root / name)  # decode, evaluate, train and mixtures read tables this way
    assert want in fails(["evaluate", "--model", str(root / "model"), "--test", str(root / name)], capsys)


def test_bad_line_of_a_formula_file_names_line_and_column(root, capsys):
    (root / "anchors.txt").write_text("x_0 >= 0.1\n# a comment\n  always[0,3] ( x_1 <= )\n")
    with pytest.raises(ValueError, match=r"anchors.txt, line 3, column 24: expected a number, found '\)'$"):
        read_formula_file(root / "anchors.txt")
    assert "anchors.txt, line 3, column 24: expected a number" in fails(
        ["embed", "--in", str(root / "test.csv"), "--out", str(root / "out.csv"), "--anchors",
         str(root / "anchors.txt"), "--n_trajectories", "10", "--n_points", "30"], capsys)


def test_model_folder_is_checked_before_from_pretrained(root, capsys):
    (root / "no_config").mkdir()
    (root / "a_file").write_text("x")
    base = ["decode", "--input", str(root / "test.csv"), "--output", str(root / "out.csv"), "--model"]
    assert fails([*base, str(root / "modle")], capsys).endswith(f"argument --model: model folder {root / 'modle'} "
                                                                "not found")
    assert "holds no config.json: not a saved model" in fails([*base, str(root / "no_config")], capsys)
    assert "is a file, not a model folder" in fails([*base, str(root / "a_file")], capsys)
    assert "argument --model: model folder" in fails(["evaluate", "--test", str(root / "test.csv"), "--model",
                                                      str(root / "modle")], capsys)


def test_device_without_that_gpu(root, capsys):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU; "cuda:0" on a machine without any
    base = ["decode", "--model", str(root / "model"), "--input", str(root / "test.csv"), "--output",
            str(root / "out.csv"), "--device"]
    assert f"argument --device: {missing}: " in fails([*base, missing], capsys)
    assert "argument --device:" in fails([*base, "gpu"], capsys)
    assert not (root / "out.csv").exists()


def test_evaluate_flags_are_checked_before_any_work(root, capsys):
    (root / "report_file").write_text("x")
    (root / "not_a_db.sqlite").write_text("not a database")
    (root / "reg_folder").mkdir()
    base = ["evaluate", "--model", str(root / "model"), "--test", str(root / "test.csv")]
    assert fails([*base, "--limit", "0"], capsys).endswith("argument --limit: must be a whole number >= 1, got '0'")
    assert fails([*base, "--limit", "1.5"], capsys).endswith("argument --limit: must be a whole number >= 1, got '1.5'")
    assert fails([*base, "--report", str(root / "report_file")], capsys).endswith(
        f"argument --report: {root / 'report_file'} is a file, not a folder")
    assert fails([*base, "--registry", str(root / "not_a_db.sqlite")], capsys).endswith(
        f"argument --registry: {root / 'not_a_db.sqlite'} is not an SQLite database (a registry file)")
    assert "is a folder, not an SQLite registry file" in fails([*base, "--registry", str(root / "reg_folder")], capsys)
    assert "is not an SQLite database" in fails(["registry", str(root / "not_a_db.sqlite")], capsys)
    assert "is not an SQLite database" in fails(["registry", str(root / "new.sqlite"), "--merge",
                                                 str(root / "not_a_db.sqlite")], capsys)


@pytest.mark.parametrize("flags,message", [
    (["--learning_rate", "0"], "training.learning_rate must be a finite number > 0, got 0"),
    (["--learning_rate", "-1e-3"], "training.learning_rate must be a finite number > 0, got -0.001"),
    (["--learning_rate", "nan"], "training.learning_rate must be a finite number > 0, got nan"),
    (["--save_steps", "0"], "training.save_steps must be > 0 (steps, or a fraction of the run if < 1), got 0"),
    (["--data.stream", "true", "--data.stream_chunk_size", "0"], "data.stream_chunk_size must be >= 1, got 0"),
])
def test_bad_training_values_fail_before_training(tmp_path, flags, message, capsys):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "training": {"max_steps": 2}}))
    line = fails(["train", "--config", str(tmp_path / "e.yaml"), "--output_dir", str(tmp_path / "o"), *flags], capsys)
    assert line == f"stldec train: error: {message}" and not (tmp_path / "o").exists()


def test_debug_shows_the_traceback_and_internal_errors_keep_it(root, monkeypatch):
    with pytest.raises(ValueError, match="header_only.csv has no rows"):
        main(["--debug", "embed", "--in", str(root / "header_only.csv"), "--out", str(root / "out.csv")])

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("stldec.cli.read_table", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["embed", "--in", str(root / "test.csv"), "--out", str(root / "out.csv")])


def test_version_and_defaults_in_help(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"stldec {metadata.version('stldec')}"
    for command, shown in [("decode", "(default: greedy)"), ("evaluate", "(default: 1000)"),
                           ("generate", "(default: balanced)"), ("quickstart", "(default: outputs/quickstart)")]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # unwrapped
        assert shown in out and "(default: None)" not in out and "(default: False)" not in out, command


def test_help_imports_neither_torch_nor_transformers():
    """`stldec --help` and every `stldec <command> [<sub-command>] --help` build their parsers without importing
    torch, transformers (`import stldec` defers the Auto registration until transformers is imported), datasets or
    pandas."""
    code = ("import sys\nfrom stldec.cli import _COMMANDS, main\n"
            "nested = [['data', 'build'], ['data', 'encoder'], ['hub', 'prepare'], ['hub', 'push']]\n"
            "for argv in [[]] + [[c] for c in _COMMANDS] + nested:\n"
            "    try:\n        main(argv + ['--help'])\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
            "heavy = ('torch', 'transformers', 'datasets', 'pandas', 'stldec.data')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
