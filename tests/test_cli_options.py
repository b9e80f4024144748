"""The shared CLI options: one list syntax, positive counts, one-line usage errors with exit code 2."""

import argparse

import pytest

from invertible.cli import build_parser, main
from invertible.commands._options import (
    add_progress,
    float_list,
    float_pair,
    int_list,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_int_list,
)


def test_list_types_parse_comma_separated_values():
    assert int_list("32,64") == [32, 64]
    assert int_list(" 4, 4 ") == [4, 4]
    assert int_list("7") == [7]
    assert positive_int_list("13,13,13") == [13, 13, 13]
    assert float_list("0,0.1,0.2") == [0.0, 0.1, 0.2]
    assert float_pair("1.0,1.3") == [1.0, 1.3]


@pytest.mark.parametrize("parse,text,message", [
    (int_list, "x", "expected comma-separated integers, got 'x'"),
    (int_list, "", "expected comma-separated integers, got ''"),
    (int_list, "1,,2", "expected comma-separated integers"),
    (int_list, "1.5", "expected comma-separated integers"),
    (positive_int_list, "4,0", "expected comma-separated positive integers, got '4,0'"),
    (float_list, "0.1,a", "expected comma-separated numbers"),
    (float_pair, "1.0", "expected 2 comma-separated numbers, got '1.0'"),
    (float_pair, "1,2,3", "expected 2 comma-separated numbers"),
    (positive_int, "0", "expected a positive integer, got '0'"),
    (positive_int, "-3", "expected a positive integer"),
    (positive_int, "2.5", "expected a positive integer"),
    (nonnegative_int, "-1", "expected a non-negative integer"),
    (positive_float, "0", "expected a positive number"),
    (positive_float, "inf", "expected a positive number"),
])
def test_bad_values_are_argparse_errors_that_say_what_was_expected(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_scalar_types_accept_valid_values():
    assert positive_int("3") == 3 and nonnegative_int("0") == 0 and positive_float("0.5") == 0.5


def test_progress_flag_pair():
    p = argparse.ArgumentParser()
    add_progress(p)
    assert p.parse_args([]).no_progress is False
    assert p.parse_args(["--no-progress"]).no_progress is True
    assert p.parse_args(["--progress"]).no_progress is False


def test_every_command_parses_the_one_list_syntax():
    parser = build_parser()
    args = parser.parse_args(["train-flow", "--data", "8gaussians", "--out", "x", "--hidden", "8,8"])
    assert args.hidden == [8, 8]
    args = parser.parse_args(["train-classifier", "--out", "x", "--blocks", "4,4", "--hidden", "32,64"])
    assert args.blocks == [4, 4] and args.hidden == [32, 64]
    args = parser.parse_args(["spheres", "--radii", "1.0,1.3", "--budgets", "0,0.1,0.2"])
    assert args.radii == [1.0, 1.3] and args.budgets == [0.0, 0.1, 0.2]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,flag", [
    (["train-flow", "--data", "8gaussians", "--steps", "1", "--batch-size", "0"], "--batch-size"),
    (["train-flow", "--data", "8gaussians", "--steps", "1", "--blocks", "0"], "--blocks"),
    (["train-flow", "--data", "8gaussians", "--steps", "0"], "--steps"),
    (["train-flow", "--data", "8gaussians", "--steps", "1", "--eval-samples", "0"], "--eval-samples"),
    (["train-classifier", "--epochs", "0"], "--epochs"),
    (["train-classifier", "--epochs", "1", "--blocks", "1,0"], "--blocks"),
    (["train-ice", "--epochs", "1", "--batch-size", "0"], "--batch-size"),
])
def test_counts_that_must_be_positive_are_refused_at_the_shell(tmp_path, capsys, argv, flag):
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    _one_line_error(capsys, f"argument {flag}: expected", "positive integer", "--help")
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_ims_cv_refuses_zero_folds(tmp_path, capsys):
    assert main(["ims", "cv", "--imzml", str(tmp_path / "a.imzML"), "--annotations", str(tmp_path / "a.csv"),
                 "--model", "roc-lda", "--folds", "0"]) == 2
    _one_line_error(capsys, "argument --folds: expected a positive integer, got '0'")


def test_old_space_separated_lists_are_refused(tmp_path, capsys):
    assert main(["train-flow", "--data", "8gaussians", "--hidden", "8", "8", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "unrecognized arguments: 8")


def test_reproduce_all_with_ids_is_an_error(tmp_path, capsys):
    assert main(["reproduce", "--all", "fig4.4", "--quick", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "--all", "fig4.4")
    assert not any(tmp_path.iterdir())  # nothing ran


def test_help_returns_zero(capsys):
    assert main(["train-flow", "--help"]) == 0
    assert "--hidden" in capsys.readouterr().out
