"""Nothing a user made is lost: training runs and exports (issue 12's data-loss rules)."""

from __future__ import annotations

import pytest
import torch

from binface.cli import main
from binface.errors import BinfaceError
from binface.train.checkpoint import load_checkpoint
from binface.train.config import load_config
from binface.train.loop import Trainer, TrainingError
from helpers import RandomFaces, TinyNet


def cfg_for(out, *overrides):
    return load_config(None, [f"output={out}", "train.batch_size=8", "train.epochs=1",
                              "optim.name=sgd", "optim.lr=0.1", "head.s=16", *overrides])


def _user_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    files = {"best.pt": b"my best model", "config.yaml": b"model: mine\n",
             "log.jsonl": b'{"step": 1}\n', "notes.txt": b"keep me"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _unchanged(folder, files):
    return all((folder / n).read_bytes() == d for n, d in files.items())


def test_a_failing_run_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    files = _user_files(out)
    cfg = cfg_for(out, f"data.train={tmp_path / 'typo.rec'}")
    with pytest.raises(BinfaceError):
        Trainer(cfg, progress=False)
    assert _unchanged(out, files)
    with pytest.raises(BinfaceError, match="not found"):  # with --overwrite too
        Trainer(cfg, overwrite=True, progress=False)
    assert _unchanged(out, files)


def test_a_folder_holding_a_run_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    files = _user_files(out)  # best.pt but no last.pt
    with pytest.raises(BinfaceError, match=r"already holds a run \(best.pt, config.yaml"):
        Trainer(cfg_for(out), model=TinyNet(), train_set=RandomFaces(), progress=False)
    assert _unchanged(out, files)
    t = Trainer(cfg_for(out), model=TinyNet(), train_set=RandomFaces(), overwrite=True,
                progress=False)
    assert _unchanged(out, files)  # nothing is touched before fit()
    t.fit()
    assert (out / "last.pt").is_file() and (out / "notes.txt").read_bytes() == b"keep me"
    assert (out / "config.yaml").read_bytes() != files["config.yaml"]
    assert not (out / "best.pt").exists()  # the replaced run's best is not this run's


def test_stale_temporaries_are_cleaned_when_a_run_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    Trainer(cfg_for(out, "train.max_steps=1"), model=TinyNet(), train_set=RandomFaces(),
            progress=False).fit()
    assert not stale.exists() and (out / "last.pt").is_file()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    net = TinyNet()
    calls = {"n": 0}

    def poison(module, args, output):  # weights become inf after the second step
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                next(net.parameters()).fill_(float("inf"))

    t = Trainer(cfg_for(tmp_path, "train.checkpoint_every=1"), model=net,
                train_set=RandomFaces(), progress=False)
    t.opt.register_step_post_hook(lambda opt, a, k: poison(None, None, None))
    with pytest.raises(TrainingError, match=r"non-finite weight tensors.*last good checkpoint"):
        t.fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 1
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values()
               if v.is_floating_point())


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(BinfaceError, match="is a file"):
        Trainer(cfg_for(tmp_path / "file"), model=TinyNet(), train_set=RandomFaces(),
                progress=False)
    with pytest.raises(BinfaceError, match="cannot write"):
        Trainer(cfg_for(tmp_path / "file" / "run"), model=TinyNet(), train_set=RandomFaces(),
                progress=False)


def test_export_never_replaces_its_input_or_an_existing_file(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    model = TinyNet()
    torch.save({"model": "quicknet_small", "state_dict": {}}, ckpt)  # never read: refused first
    before = ckpt.read_bytes()
    for fmt in ("onnx", "packed"):
        assert main(["export", str(ckpt), "--format", fmt, "-o", str(ckpt), "--overwrite"]) == 2
        assert "also an input" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    out = tmp_path / "model.bfp"
    out.write_bytes(b"a previous export")
    assert main(["export", "quicknet_small", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"a previous export"
    assert main(["export", "quicknet_small", "-o", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:8] != b"a previo"
    del model


@pytest.mark.parametrize("raw, message", [
    (b"model: mobilefacenet\n# \xff\xfe\n", "is not UTF-8 text"),
    (b"train:\n  epochs: .nan\n", "train.epochs=nan is invalid"),
    (b"train:\n  seed: 100000000000000000000000\n", "train.seed=.* is invalid"),
    (b"data:\n  train: [a, b]\n", "data.train=.* is invalid"),
    (b"a: " + b"[" * 100000 + b"\n", "nests too deeply"),
    (b"model: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_crafted_configs_are_one_line(tmp_path, raw, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    with pytest.raises(BinfaceError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_eval_refuses_to_replace_reports(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    ckpt = tmp_path / "m.pt"
    torch.save({"model": "quicknet_small", "state_dict": {}}, ckpt)
    code = main(["eval", str(ckpt), "--pack", str(tmp_path / "x.bin"), "--out", str(out)])
    assert code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "my notes"
    with pytest.raises(SystemExit) as info:  # argparse: one usage line, exit 2
        main(["eval", str(ckpt), "--pack", "x.bin", "--batch-size", "0"])
    assert info.value.code == 2 and "positive" in capsys.readouterr().err
