"""Training: config errors, exact resume, NaN stop, checkpoints, binary recipe, DDP, KD."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from binface.errors import BinfaceError
from binface.nn import ArcFace, PartialFC
from binface.train.checkpoint import load_checkpoint, save_atomic
from binface.train.config import dump_config, load_config
from binface.train.loop import Trainer, TrainingError
from helpers import RandomFaces, TinyBinaryNet, TinyNet, register_test_models

HERE = Path(__file__).parent


def cfg_for(out, *overrides):
    return load_config(None, [f"output={out}", "train.batch_size=8", "train.epochs=2",
                              "train.log_every=1", "optim.name=sgd", "optim.lr=0.1",
                              "head.s=16", *overrides])


def losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.history if "loss" in h]


# ---------------------------------------------------------------- config
def test_config_layers_defaults_file_base_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: binaryfacenet\noptim:\n  lr: 0.01\ntrain:\n  epochs: 3\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("base: base.yaml\ntrain:\n  batch_size: 32\n")
    cfg = load_config(exp, ["optim.lr=0.05", "data.val=[a.bin, b.bin]", "teacher=t.pt"])
    assert cfg["model"] == "binaryfacenet" and cfg["train"]["epochs"] == 3
    assert cfg["train"]["batch_size"] == 32 and cfg["optim"]["lr"] == 0.05
    assert cfg["data"]["val"] == ["a.bin", "b.bin"] and cfg["teacher"] == "t.pt"
    assert cfg["head"]["margin"] == "arcface"  # untouched defaults stay
    assert load_config(None, ["optim.weight_decay=5e-4"])["optim"]["weight_decay"] == 5e-4
    assert load_config(None, ["model_kwargs.embedding_size=256"])["model_kwargs"] == {
        "embedding_size": 256}
    assert "batch_size: 128" in dump_config(load_config())


@pytest.mark.parametrize("text,message", [
    ("train:\n  batchsize: 4\n", "unknown config key 'train.batchsize'.*train.batch_size"),
    ("optimizer: {lr: 1}\n", "unknown config key 'optimizer'"),
    ("train: 5\n", "must be a mapping"),
    ("train: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_config_file_errors(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(BinfaceError, match=message):
        load_config(f)


@pytest.mark.parametrize("override,message", [
    ("optim.lrate=1", "unknown config key 'optim.lrate'.*optim.lr"),
    ("train.batch_size=0", "train.batch_size=0 is invalid: expected a positive integer"),
    ("train.batch_size=abc", "train.batch_size='abc' is invalid"),
    ("optim.name=rmsprop", "optim.name='rmsprop' is invalid: expected one of"),
    ("head.sample_rate=2", "head.sample_rate=2 is invalid"),
    ("train.amp=fp8", "train.amp='fp8' is invalid"),
    ("distill.cosine=-1", "distill.cosine=-1 is invalid"),
    ("distill.l2={weight: 1, schedule: sometimes}", "distill.l2.schedule='sometimes'"),
    ("noequals", "must look like key=value"),
])
def test_config_override_errors(override, message):
    with pytest.raises(BinfaceError, match=message):
        load_config(None, [override])


def test_missing_config_file_and_data(tmp_path):
    with pytest.raises(BinfaceError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(BinfaceError, match="training data not found: .*nowhere.rec"):
        Trainer(cfg_for(tmp_path / "o", f"data.train={tmp_path / 'nowhere.rec'}"),
                model=TinyNet(), progress=False)
    with pytest.raises(BinfaceError, match="data.train is not set"):
        Trainer(cfg_for(tmp_path / "o2"), model=TinyNet(), progress=False)


# ---------------------------------------------------------------- resume and checkpoints
def test_resume_gives_the_same_loss_curve(tmp_path):
    full = Trainer(cfg_for(tmp_path / "a"), model=TinyNet(), train_set=RandomFaces(),
                   progress=False)
    full.fit()
    first = Trainer(cfg_for(tmp_path / "b", "train.max_steps=4"), model=TinyNet(),
                    train_set=RandomFaces(), progress=False)
    first.fit()
    second = Trainer(cfg_for(tmp_path / "b"), model=TinyNet(seed=123), train_set=RandomFaces(),
                     resume=True, progress=False)
    second.fit()
    curve = dict(losses(full))
    assert len(curve) == 12
    resumed = dict(losses(first) + losses(second))
    assert resumed == curve  # bit-for-bit the same losses at every step
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))


def test_output_is_never_overwritten_without_asking(tmp_path):
    Trainer(cfg_for(tmp_path, "train.max_steps=1"), model=TinyNet(), train_set=RandomFaces(),
            progress=False).fit()
    with pytest.raises(BinfaceError, match="already holds a run.*--resume.*--overwrite"):
        Trainer(cfg_for(tmp_path), model=TinyNet(), train_set=RandomFaces(), progress=False)
    Trainer(cfg_for(tmp_path, "train.max_steps=1"), model=TinyNet(), train_set=RandomFaces(),
            overwrite=True, progress=False).fit()
    with pytest.raises(BinfaceError, match="no checkpoint .* to resume from"):
        Trainer(cfg_for(tmp_path / "empty"), model=TinyNet(), train_set=RandomFaces(),
                resume=True, progress=False)


def test_checkpoints_load_weights_only_and_write_atomically(tmp_path):
    Trainer(cfg_for(tmp_path, "train.max_steps=2"), model=TinyNet(), train_set=RandomFaces(),
            progress=False).fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 2 and ck["embedding_size"] == 16 and ck["num_classes"] == 6
    assert torch.load(tmp_path / "last.pt", weights_only=True)["format"] == "binface-checkpoint"
    assert not list(tmp_path.glob(".*.tmp"))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    save_atomic({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(RuntimeError):
        save_atomic({"a": Boom()}, tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt", weights_only=True) == {"a": 1}  # old file intact
    assert not list(tmp_path.glob(".x.pt.*"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BinfaceError, match="junk.pt is not a readable binface checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(BinfaceError, match="not a binface checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    net = TinyNet()
    calls = {"n": 0}
    forward = net.forward

    def poisoned(x):
        calls["n"] += 1
        y = forward(x)
        return y * float("nan") if calls["n"] > 2 else y  # forward 3 is step 3

    net.forward = poisoned
    t = Trainer(cfg_for(tmp_path, "train.checkpoint_every=1"), model=net,
                train_set=RandomFaces(), progress=False)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3 .*last good checkpoint"):
        t.fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())


# ---------------------------------------------------------------- binary recipe
def test_binary_recipe_two_stage_adam_and_clipping(tmp_path):
    net = TinyBinaryNet()
    seen = []
    orig = net.bconv.forward

    def spy(x):
        seen.append(net.bconv.quantize_kernel)
        return orig(x)

    net.bconv.forward = spy
    cfg = load_config(None, [f"output={tmp_path}", "train.batch_size=8", "train.epochs=2",
                             "train.two_stage=true", "train.stage1_fraction=0.5", "optim.lr=0.5"])
    t = Trainer(cfg, model=net, train_set=RandomFaces(), progress=False)
    assert isinstance(t.opt, torch.optim.Adam)  # optim.name=auto -> Adam for binary networks
    assert t.opt.param_groups[0]["lr"] == 0.5
    t.fit()
    assert seen[:6] == [False] * 6 and seen[6:] == [True] * 6
    assert net.bconv.weight.abs().max() <= 1.0  # clipped after every step
    assert net.bconv.quantize_kernel


# ---------------------------------------------------------------- distributed
def test_two_gloo_processes_match_one_process(tmp_path):
    env_cmd = [sys.executable, str(HERE / "ddp_worker.py")]
    subprocess.run([*env_cmd, str(tmp_path / "one"), "16"], check=True, cwd=HERE,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--master_port=0", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0",
                    str(HERE / "ddp_worker.py"), str(tmp_path / "two"), "8"],
                   check=True, cwd=HERE, capture_output=True, timeout=300)
    one = load_checkpoint(tmp_path / "one" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["step"] == two["step"] == 1
    start = TinyNet().state_dict()
    for k, v in one["state_dict"].items():
        assert not torch.equal(v, start[k])  # the step really moved the weights
        torch.testing.assert_close(two["state_dict"][k], v, rtol=1e-5, atol=1e-6)
    # the class centres were sharded over the two ranks and gathered back in order
    # (float32 sums in another order: differences of a few 1e-6 at lr 0.5)
    torch.testing.assert_close(two["head_state"]["weight"], one["head_state"]["weight"],
                               rtol=1e-4, atol=2e-5)
    init = PartialFC(ArcFace(), 16, 6, seed=0).weight.detach()
    assert (one["head_state"]["weight"] - init).abs().max() > 1e-4  # the centres moved too


# ---------------------------------------------------------------- distillation
def test_distillation_losses(tmp_path):
    register_test_models()
    teacher_cfg = load_config(None, [f"output={tmp_path / 't'}", "model=test_tiny",
                                     "train.batch_size=8", "train.max_steps=3", "head.s=16",
                                     "optim.name=sgd", "optim.lr=0.1"])
    Trainer(teacher_cfg, train_set=RandomFaces(), progress=False).fit()
    teacher = str(tmp_path / "t" / "last.pt")
    student_cfg = load_config(None, [
        f"output={tmp_path / 's'}", "model=test_tiny", "model_kwargs.embedding_size=8",
        "train.batch_size=8", "train.max_steps=4", "train.log_every=1", "head.s=16",
        "optim.name=sgd", "optim.lr=0.1", f"teacher={teacher}", "distill.cosine=1",
        "distill.l2=0.5", "distill.margin={weight: 1, schedule: linear_decay}",
        "distill.logit_kd={weight: 1, schedule: linear_warmup}"])
    t = Trainer(student_cfg, train_set=RandomFaces(), progress=False)
    assert isinstance(t.distiller.proj, torch.nn.Linear)  # 8-D student, 16-D teacher
    before = t.distiller.proj.weight.detach().clone()
    t.fit()
    logged = [h for h in t.history if "loss" in h]
    for key in ("distill_cosine", "distill_l2", "distill_margin", "distill_logit_kd"):
        assert all(torch.isfinite(torch.tensor(h[key])) and h[key] >= 0 for h in logged)
    assert not torch.equal(before, t.distiller.proj.weight)  # the projection learns
    with pytest.raises(BinfaceError, match="6 class centres but the training set has 4"):
        Trainer(load_config(None, [f"output={tmp_path / 'x'}", "model=test_tiny",
                                   "train.batch_size=8", f"teacher={teacher}",
                                   "distill.margin=1"]),
                train_set=RandomFaces(num_classes=4), progress=False)


# ---------------------------------------------------------------- options
def test_grad_accumulation_equals_one_big_batch(tmp_path):
    big = Trainer(cfg_for(tmp_path / "big", "train.max_steps=1", "train.grad_clip=0"),
                  model=TinyNet(), train_set=RandomFaces(), progress=False)
    big.fit()
    acc = Trainer(cfg_for(tmp_path / "acc", "train.max_steps=1", "train.grad_clip=0",
                          "train.batch_size=4", "train.grad_accum=2"),
                  model=TinyNet(), train_set=RandomFaces(), progress=False)
    acc.fit()
    for a, b in zip(big.model.parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    t = Trainer(cfg_for(tmp_path, "train.max_steps=2", "train.amp=bf16"), model=TinyNet(),
                train_set=RandomFaces(), progress=False)
    t.fit()
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in losses(t))
    with pytest.raises(BinfaceError, match="fp16 needs a CUDA device|bf16 or none on CPU"):
        Trainer(cfg_for(tmp_path / "fp16", "train.amp=fp16", "train.device=cpu"),
                model=TinyNet(), train_set=RandomFaces(), progress=False)


def test_train_cli_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    from binface.cli import main

    register_test_models()
    rng = torch.Generator().manual_seed(0)
    for ident in range(3):
        (tmp_path / "faces" / f"id{ident}").mkdir(parents=True)
        for k in range(4):
            pixels = torch.randint(0, 256, (120, 100, 3), generator=rng, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "faces" / f"id{ident}" / f"{k}.png")
    args = ["train", "model=test_tiny", f"data.train={tmp_path / 'faces'}",
            f"output={tmp_path / 'run'}", "train.batch_size=4", "train.epochs=1", "head.s=16"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and (tmp_path / "run" / "last.pt").is_file()
    assert main(args) == 2  # the run exists: never overwritten without asking
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


# ---------------------------------------------------------------- construction
def test_every_attribute_is_set_in_init_and_config_yaml_is_written(tmp_path):
    t = Trainer(cfg_for(tmp_path, "train.max_steps=2"), model=TinyNet(), train_set=RandomFaces(),
                progress=False)
    before = set(vars(t))
    assert t.family == "cnn" and t.optim_name == "sgd" and t.tb is None
    assert (t.steps_per_epoch, t.total_steps, t.stop_step) == (6, 12, 2)
    t.fit()
    assert set(vars(t)) == before  # fit() adds no attribute of its own
    assert t.tb is None  # closed at the end
    assert load_config(tmp_path / "config.yaml") == t.cfg


def test_family_of_an_unregistered_binary_module_picks_adam(tmp_path):
    class Unregistered(TinyBinaryNet):
        family = None  # judged from its layers, as binface.models.loading.family_of does

    t = Trainer(cfg_for(tmp_path, "optim.name=auto", "optim.lr=auto"), model=Unregistered(),
                train_set=RandomFaces(), progress=False)
    assert t.family == "binary" and isinstance(t.opt, torch.optim.Adam)
    assert t.opt.param_groups[0]["lr"] == 1e-3


def test_epoch_batches_split_one_permutation_over_ranks():
    from binface.train.data import EpochBatches

    one = [i for b in EpochBatches(48, 8, 0, 1, seed=3, epoch=1) for i in b]
    ranks = [list(EpochBatches(48, 4, r, 2, seed=3, epoch=1)) for r in range(2)]
    merged = [i for b0, b1 in zip(*ranks, strict=True) for i in b0 + b1]
    assert merged == one and len(one) == 48
    resumed = [i for b in EpochBatches(48, 8, 0, 1, seed=3, epoch=1, start=2) for i in b]
    assert resumed == one[16:]
    assert one != [i for b in EpochBatches(48, 8, 0, 1, seed=3, epoch=2) for i in b]


def test_attention_transfer_between_named_stages(tmp_path):
    """distill.attention matches normalised spatial maps of named stages: it trains and
    logs its loss, and bad names or shapes are one-line errors."""
    from binface.train.distill import attention_map, match_maps

    register_test_models()
    teacher_cfg = load_config(None, [f"output={tmp_path / 't'}", "model=test_tiny",
                                     "train.batch_size=8", "train.max_steps=2", "head.s=16",
                                     "optim.name=sgd", "optim.lr=0.1"])
    Trainer(teacher_cfg, train_set=RandomFaces(), progress=False).fit()
    teacher = str(tmp_path / "t" / "last.pt")

    def student(*extra):
        return load_config(None, [
            f"output={tmp_path / 's'}", "model=test_tiny", "train.batch_size=8",
            "train.max_steps=3", "train.log_every=1", "head.s=16", "optim.name=sgd",
            "optim.lr=0.1", f"teacher={teacher}", "distill.attention=1", *extra])

    t = Trainer(student("distill.attention_pairs=[[conv, conv]]"), train_set=RandomFaces(),
                progress=False, overwrite=True)
    t.fit()
    logged = [h["distill_attention"] for h in t.history if "loss" in h]
    assert len(logged) == 3 and all(0 <= v <= 4 for v in logged)
    assert max(logged) > 0  # different weights: different maps

    # the maps: squares of channels averaged; tokens as a square map (class token dropped)
    f = torch.randn(2, 3, 4, 4)
    assert torch.allclose(attention_map(f, "x"), f.pow(2).mean(1))
    tokens = torch.randn(2, 1 + 9, 5)
    assert attention_map(tokens, "x").shape == (2, 3, 3)
    a, b = match_maps(torch.rand(2, 8, 8), torch.rand(2, 4, 4), "p")
    assert a.shape == b.shape == (2, 4, 4)

    with pytest.raises(BinfaceError, match="the student has no stage 'convv'.*did you mean conv"):
        Trainer(student("distill.attention_pairs=['conv:convv']"), train_set=RandomFaces(),
                progress=False, overwrite=True)
    with pytest.raises(BinfaceError, match=r"teacher stage 'fc' gives \(2, 16\)"):
        Trainer(student("distill.attention_pairs=[[fc, conv]]"), train_set=RandomFaces(),
                progress=False, overwrite=True)
    with pytest.raises(BinfaceError, match="names no"):
        Trainer(student(), train_set=RandomFaces(), progress=False, overwrite=True)
    with pytest.raises(BinfaceError, match="cannot be pooled to one size"):
        match_maps(torch.rand(1, 8, 2), torch.rand(1, 4, 4), "p")
    with pytest.raises(BinfaceError, match="distill.attention_pairs"):
        load_config(None, ["distill.attention_pairs=[[a]]"])


def test_two_stage_recipe_on_binaryfaceformer(tmp_path):
    """Stage one: every binary projection of BinaryFaceFormer (attention and MLP) keeps
    real weights over binary activations; stage two binarises them; both train."""
    from binface.nn import QuantizedLayer

    cfg = load_config(None, [f"output={tmp_path}", "model=binaryfaceformer_add",
                             "train.batch_size=4", "train.epochs=1", "train.log_every=1",
                             "train.two_stage=true", "train.stage1_fraction=0.5", "head.s=16"])
    t = Trainer(cfg, train_set=RandomFaces(n=16), progress=False)  # 4 steps
    layers = [m for m in t.model.modules() if isinstance(m, QuantizedLayer)]
    assert len(layers) > 20
    seen = []
    orig = t._train_step

    def spy(batches):
        out = orig(batches)
        seen.append({m.quantize_kernel for m in layers})
        return out

    t._train_step = spy
    t.fit()
    assert seen == [{False}, {False}, {True}, {True}]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in t.history if "loss" in h)
    assert all(m.quantize_kernel for m in layers)  # the saved model is the binary one
