"""The config schema: one declaration gives defaults, validation, choices and --list-keys."""

import copy

import pytest

from binface.errors import BinfaceError
from binface.nn.margin import MARGINS, make_margin
from binface.train import config as C
from binface.train.optim import LR_SCHEDULES, OPTIMIZERS, WEIGHT_SCHEDULES, lr_lambda, weight_at
from helpers import register_test_models

# a value of the wrong kind for every type of the schema (a new type needs a case here)
BAD = {
    C.Int: ["abc", 1.5, True, -1],
    C.Number: ["abc", True, float("nan"), [1]],
    C.Bool: ["maybe", 1],
    C.Text: [[], "", {"a": 1}],
    C.OneOf: ["no_such_choice", 3],
    C.Paths: [5, [1, 2]],
    C.StagePairs: [5, [["a"]], ["ab"], [[1, 2]]],
    C.Mapping: [5, "x"],
    C.Betas: [[0.9], [0.9, 1.0], "0.9"],
    C.LossWeight: [-1, "x", {"weight": 1, "schedule": "sometimes"}, {"w": 1}],
}


def test_every_key_has_a_default_a_type_and_one_line_of_help():
    assert C.load_config() == C.DEFAULTS  # the defaults are a valid config as they are
    flat = dict(C._walk(C.DEFAULTS))
    assert set(flat) == set(C.SCHEMA)
    for key, spec in C.SCHEMA.items():
        assert spec.help and "\n" not in spec.help, key
        assert type(spec.type) in BAD, f"{key}: add bad values of {type(spec.type).__name__}"
        assert flat[key] == spec.default
        assert spec.check(key, copy.deepcopy(spec.default)) == spec.default


@pytest.mark.parametrize("key", sorted(C.SCHEMA))
def test_a_bad_value_of_each_key_is_one_line_naming_it(key):
    spec = C.SCHEMA[key]
    for bad in BAD[type(spec.type)]:
        if isinstance(spec.type, C.Int) and spec.type.lo is None and bad == -1:
            continue  # any integer is fine (train.seed)
        cfg = copy.deepcopy(C.DEFAULTS)
        *path, last = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        node[last] = bad
        with pytest.raises(BinfaceError) as err:
            C.validate(cfg)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"config value {key}") and "expected" in msg


@pytest.mark.parametrize("override,ok", [
    ("train.stage1_fraction=1", True), ("train.stage1_fraction=1.01", False),
    ("train.epochs=0.5", True), ("train.epochs=0", False),
    ("data.workers=0", True), ("train.batch_size=0", False),
    ("head.m=1e-1", True), ("head.m=null", True), ("head.m=2.5", False),
    ("optim.lr=auto", True), ("optim.lr=1e-3", True), ("optim.lr=-1", False),
    ("train.max_steps=null", True), ("data.train=null", True), ("output=null", False),
    ("train.seed=-3", False), ("train.seed=9223372036854775807", True),
    ("train.seed=100000000000000000000000", False), ("distill.cosine={weight: 2}", True),
])
def test_ranges_and_special_values(override, ok):
    if ok:
        C.load_config(None, [override])
    else:
        with pytest.raises(BinfaceError, match="is invalid: expected"):
            C.load_config(None, [override])


def test_exponents_without_a_dot_are_numbers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1e-3\nhead:\n  m: 3e-1\n")
    cfg = C.load_config(f)
    assert cfg["optim"]["lr"] == 1e-3 and cfg["head"]["m"] == 0.3


def test_a_single_val_pack_becomes_a_list():
    assert C.load_config(None, ["data.val=lfw.bin"])["data"]["val"] == ["lfw.bin"]


def test_unknown_keys_and_sections():
    with pytest.raises(BinfaceError, match="'train' in the command line is a section"):
        C.load_config(None, ["train=5"])
    with pytest.raises(BinfaceError, match="unknown config key 'model_kwarg.x'.*model_kwargs"):
        C.load_config(None, ["model_kwarg.x=1"])
    cfg = copy.deepcopy(C.DEFAULTS)
    cfg["head"]["scale"] = 3
    with pytest.raises(BinfaceError, match="unknown config key 'head.scale'"):
        C.validate(cfg)


def test_choices_come_from_the_registries():
    assert C.SCHEMA["head.margin"].type.names() == list(MARGINS)
    for name in MARGINS:
        make_margin(name)
    assert C.SCHEMA["optim.name"].type.names() == ["auto", *OPTIMIZERS]
    assert C.SCHEMA["schedule.name"].type.names() == list(LR_SCHEDULES)
    assert C.DISTILL_LOSSES == ("cosine", "l2", "margin", "logit_kd", "attention")
    with pytest.raises(BinfaceError, match="model='mobilefacenett'.*did you mean mobilefacenet"):
        C.load_config(None, ["model=mobilefacenett"])
    register_test_models()  # a model registered later is a valid choice at once
    assert C.load_config(None, ["model=test_tiny"])["model"] == "test_tiny"


def test_list_keys_prints_every_key_with_type_default_and_help(capsys):
    from binface.cli import main

    assert main(["train", "--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(C.SCHEMA) + 1  # a header, then one line per key
    for line, (key, spec) in zip(lines[1:], C.SCHEMA.items(), strict=True):
        assert line.split()[0] == key
        assert spec.describe() in line and line.endswith(spec.help)
    assert "one of " + ", ".join(MARGINS) in next(x for x in lines if x.startswith("head.margin"))


def test_print_config_shows_the_resolved_config(capsys):
    from binface.cli import main

    assert main(["train", "optim.lr=0.02", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.02" in out and "margin: arcface" in out


def test_schedule_tables():
    assert lr_lambda(0, 100, 10, "polynomial", 1.0, 0.0) == pytest.approx(0.1)  # warm-up
    assert lr_lambda(10, 100, 10, "cosine", 1.0, 0.0) == pytest.approx(1.0)
    assert lr_lambda(100, 100, 10, "cosine", 1.0, 0.1) == pytest.approx(0.1)
    assert lr_lambda(55, 100, 10, "polynomial", 2.0, 0.0) == pytest.approx(0.25)
    assert lr_lambda(99, 100, 0, "constant", 1.0, 0.0) == 1.0
    assert set(WEIGHT_SCHEDULES) == {"constant", "linear_decay", "linear_warmup"}
    assert weight_at(2.0, "linear_decay", 50, 100) == pytest.approx(1.0)
    assert weight_at(2.0, "linear_warmup", 10, 100) == pytest.approx(1.0)
    assert weight_at(2.0, "constant", 99, 100) == 2.0
