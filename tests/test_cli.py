"""The ``binface`` command: help, version, models, and one-line errors for bad input."""

import subprocess
import sys

import pytest
import torch

from binface import __version__
from binface.cli import build_parser, main
from binface.errors import BinfaceError, InputShapeError, UnknownModelError
from binface.models import create_model


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_exit(capsys, *argv):
    """For argparse paths that exit: (code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_version(capsys):
    code, out, _ = run_exit(capsys, "--version")
    assert code == 0 and out.strip() == f"binface {__version__}"


def test_help_on_every_subcommand(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"models", "profile"} <= set(sub.choices)
    for name in sub.choices:
        code, out, _ = run_exit(capsys, name, "--help")
        assert code == 0 and "usage: binface " + name in out


def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "binface", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"binface {__version__}"


def test_models_lists_family_and_description(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("binaryfacenet "))
    assert " binary " in line and "DoReFa" in line
    code, out, _ = run(capsys, "models", "--family", "binary")
    assert len(out.strip().splitlines()) == 1 + 8  # Table 2 six + two BinaryFaceFormers


def test_unknown_model_lists_close_matches(capsys):
    with pytest.raises(UnknownModelError) as exc:
        create_model("quiknet")
    assert "unknown model 'quiknet'" in str(exc.value) and "quicknet" in str(exc.value)
    assert isinstance(exc.value, BinfaceError) and isinstance(exc.value, KeyError)
    code, out, err = run(capsys, "profile", "quiknet")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "did you mean quicknet" in err
    with pytest.raises(UnknownModelError, match="see `binface models`"):
        create_model("resnet9000")


def test_wrong_input_shape_is_one_line():
    model = create_model("binaryfacenet").eval()
    with pytest.raises(InputShapeError, match=r"112x112 input images .* got 96x96"):
        model(torch.zeros(1, 3, 96, 96))
    with pytest.raises(InputShapeError, match=r"NCHW RGB input .* got \(1, 1, 112, 112\)"):
        create_model("quicknet")(torch.zeros(1, 1, 112, 112))
    with pytest.raises(InputShapeError, match=r"got \(3, 112, 112\)"):
        model(torch.zeros(3, 112, 112))
    with pytest.raises(InputShapeError, match="at least 32x32"):
        create_model("quicknet")(torch.zeros(1, 3, 16, 16))


def test_cli_wrong_input_size_is_one_line(capsys):
    code, _, err = run(capsys, "profile", "binaryfacenet", "--input-size", "96")
    assert code == 2 and err.count("\n") == 1 and "got 96x96" in err
    # size-agnostic models profile at another size
    code, out, _ = run(capsys, "profile", "quicknet", "--backbone-only", "--input-size", "224")
    assert code == 0 and "224x224x3" in out


@pytest.mark.parametrize("size", ["11.5", "abc", "112x", "0", "-3"])
def test_cli_non_integer_size_is_one_line(capsys, size):
    code, _, err = run_exit(capsys, "profile", "quicknet", "--input-size", size)
    assert code == 2
    assert err.count("\n") == 1 and "input size must be a positive integer" in err


def test_profile_needs_a_name_or_a_table(capsys):
    code, _, err = run(capsys, "profile")
    assert code == 2 and "name a model" in err
    code, _, err = run(capsys, "profile", "quicknet", "--table", "binary")
    assert code == 2 and "not both" in err


def test_worker_errors_are_cut_to_their_message():
    from binface.cli import one_line

    reraised = BinfaceError("Caught BinfaceError in DataLoader worker process 0.\n"
                            "Original Traceback (most recent call last):\n  File \"x.py\"\n"
                            "binface.errors.BinfaceError: train.rec: record 7: corrupt image")
    assert one_line(reraised) == "train.rec: record 7: corrupt image"
    assert one_line(BinfaceError("plain message")) == "plain message"
