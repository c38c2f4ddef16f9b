"""One way to load a model (binface.models.loading) and one way to write a file (fileio)."""

from __future__ import annotations

import os

import pytest
import torch

from binface.errors import BinfaceError, InputShapeError, UnknownModelError
from binface.fileio import atomic_write, stale_temporaries, write_bytes, write_text, write_with
from binface.models import create_model, family_of, load_checkpoint, load_model
from binface.models.loading import MAX_MODEL_ELEMENTS, build_model, model_from_checkpoint


def _ckpt(tmp_path, name="binaryfacenet", kwargs=None, **extra):
    model = create_model(name, **(kwargs or {"embedding_size": 64}))
    state = {"model": name, "model_kwargs": kwargs or {"embedding_size": 64},
             "state_dict": model.state_dict(), **extra}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path, model


def test_name_checkpoint_and_module_load_the_same_way(tmp_path):
    path, model = _ckpt(tmp_path, format="binface-checkpoint", version=1)
    lm = load_model(path)
    assert lm.name == "binaryfacenet" and lm.family == "binary" and lm.input_size == (112, 112)
    for a, b in zip(lm.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not lm.model.training
    assert load_model("mobilefacenet").family == "cnn"
    assert load_model("edgeface_xs").family == "hybrid"
    assert load_model(torch.nn.Conv2d(3, 4, 3)).family == "cnn"


def test_family_of_a_module_outside_the_zoo():
    assert family_of(torch.nn.Sequential(create_model("quicknet"))) == "binary"
    assert family_of(torch.nn.Linear(2, 2)) == "cnn"
    assert family_of(torch.nn.Linear(2, 2), "edgeface_xs") == "hybrid"


@pytest.mark.parametrize("extra, message", [
    ({"format": "other"}, "format 'other'"),
    ({"version": "abc"}, "not a positive integer"),
    ({"version": 99}, "upgrade binface"),
])
def test_checkpoint_headers_are_checked(tmp_path, extra, message):
    path, _ = _ckpt(tmp_path, **extra)
    with pytest.raises(BinfaceError, match=message):
        load_model(path)


def test_foreign_missing_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(BinfaceError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(BinfaceError, match="expected a dict with 'model'"):
        load_model(tmp_path / "foreign.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(BinfaceError, match="not a dict"):
        load_model(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(BinfaceError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    # weights of one model under another name: one line, counts of what does not fit
    m = create_model("mobilefacenet")
    torch.save({"model": "quicknet", "state_dict": m.state_dict()}, tmp_path / "swap.pt")
    with pytest.raises(BinfaceError, match=r"swap.pt: the weights do not fit model 'quicknet'"):
        load_model(tmp_path / "swap.pt")
    # same keys, other shapes
    big = create_model("binaryfacenet", embedding_size=128).state_dict()
    torch.save({"model": "binaryfacenet", "model_kwargs": {"embedding_size": 64},
                "state_dict": big}, tmp_path / "shape.pt")
    with pytest.raises(BinfaceError, match="do not fit") as info:
        load_model(tmp_path / "shape.pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"bogus": 1}, "unexpected keyword argument 'bogus'"),
    ({"embedding_size": -3}, "negative dimension"),
    ({"embedding_size": 10**11}, "cannot build|would hold"),
    ([1, 2], "model_kwargs must be a dict"),
])
def test_bad_model_kwargs_are_one_line(tmp_path, kwargs, message):
    torch.save({"model": "binaryfacenet", "model_kwargs": kwargs, "state_dict": {}},
               tmp_path / "k.pt")
    with pytest.raises(BinfaceError, match=message) as info:
        load_model(tmp_path / "k.pt")
    assert str(info.value).startswith(str(tmp_path / "k.pt"))
    assert "\n" not in str(info.value)


def test_size_limit_is_checked_before_allocating():
    # 400 x 10^6 embedding weights on the meta device: refused without allocating 1.6 GB
    with pytest.raises(BinfaceError, match="would hold"):
        build_model("mobilefacenet", {"embedding_size": MAX_MODEL_ELEMENTS // 100})


def test_unknown_model_names_the_checkpoint(tmp_path):
    torch.save({"model": "nosuchnet", "state_dict": {}}, tmp_path / "u.pt")
    with pytest.raises(UnknownModelError, match="u.pt: unknown model 'nosuchnet'"):
        model_from_checkpoint(tmp_path / "u.pt")


def test_malicious_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"model": "quicknet", "state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(BinfaceError) as info:
        load_model(tmp_path / "evil.pt")
    msg = str(info.value)
    assert "refused" in msg and "nothing in it was run" in msg
    assert "weights_only" not in msg and "\x1b" not in msg and "\n" not in msg
    assert not (tmp_path / "ran").exists()


def test_fixed_input_size_is_enforced():
    with pytest.raises(InputShapeError):
        load_model("edgeface_xs", input_size=(96, 96))


# ------------------------------------------------------------------ fileio
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"precious")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"precious"
    assert stale_temporaries(target) == []
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    write_text(tmp_path / "sub" / "t.txt", "héllo\n")
    assert (tmp_path / "sub" / "t.txt").read_text(encoding="utf-8") == "héllo\n"


def test_write_with_keeps_the_suffix_and_cleans_up(tmp_path):
    seen = []

    def writer(p):
        seen.append(p.suffix)
        p.write_text("x")

    write_with(tmp_path / "plot.png", writer)
    assert seen == [".png"] and (tmp_path / "plot.png").read_text() == "x"

    def failing(p):
        p.write_text("partial")
        raise ValueError("no")

    with pytest.raises(ValueError):
        write_with(tmp_path / "plot.png", failing)
    assert (tmp_path / "plot.png").read_text() == "x"
    assert stale_temporaries(tmp_path / "plot.png") == []


def test_unwritable_destination_is_one_line(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(BinfaceError, match="cannot write"):
        write_bytes(tmp_path / "file" / "below.bin", b"x")


def test_check_outputs_refuses_existing_and_input_paths(tmp_path):
    from binface.fileio import check_outputs

    src = tmp_path / "last.pt"
    src.write_bytes(b"ckpt")
    check_outputs([tmp_path / "new.onnx"], inputs=[src])
    with pytest.raises(BinfaceError, match="pass --overwrite"):
        check_outputs([src])
    check_outputs([src], overwrite=True)
    with pytest.raises(BinfaceError, match="also an input"):
        check_outputs([src], inputs=[src], overwrite=True)
    (tmp_path / "link.pt").symlink_to(src)
    with pytest.raises(BinfaceError, match="also an input"):
        check_outputs([tmp_path / "link.pt"], inputs=[src], overwrite=True)
    with pytest.raises(BinfaceError, match="is a directory"):
        check_outputs([tmp_path], overwrite=True)
    assert src.read_bytes() == b"ckpt"
