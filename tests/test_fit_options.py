"""fit's options are defined once, in C++ (TORCHTL_FIT_OPTIONS in csrc/engine/options.h): the
Python fit/evaluate of the engine and of its twin keep explicit signatures, checked here against
the C++ options the binding exposes."""
import inspect

import pytest

import torchtl
from torchtl import _C

CPP = _C.engine.FIT_OPTIONS

# Options that Python derives instead of taking them: the optimizer instance's groups,
# torch.distributed's default group, and the model file's metadata (from the model and the loaders).
DERIVED = {"param_groups", "process_group", "model_metadata"}
# Options the C++ fit takes ahead of the options redesign (issue 25), which generates their Python
# keywords and command-line flags from the table.
CPP_ONLY = {"norm_weight_decay", "bias_weight_decay", "lr_warmup_method", "lr_warmup_decay", "lr_min"}
# Python-only arguments: the logs and the progress display.
PYTHON_ONLY = {"tensorboard", "progress"}
# None in Python stands for "the C++ default" (or, for lr/momentum/weight_decay/nesterov, "the
# optimizer instance's own"); checked against C++ through the values fit passes on.
NONE_MEANS_DEFAULT = {"lr", "momentum", "weight_decay", "nesterov", "head_lr", "clip_grad_norm", "device", "amp",
                      "channels_last", "checkpoint_dir", "resume", "class_weights"}
# Python's fit caches features only when the train transform is deterministic, which only Python
# knows: True there asks for the cache where it is safe; C++ caches only when told. Its sync_bn=None
# follows the model's norm layers (nn.SyncBatchNorm), which only the Python model shows.
PYTHON_DEFAULTS = {torchtl.engine.fit: {"cache_features": True, "sync_bn": None},
                   torchtl.reference.fit: {"cache_features": False}}


def _options(function):
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in PYTHON_ONLY}


@pytest.mark.parametrize("fit", [torchtl.engine.fit, torchtl.reference.fit], ids=["engine", "reference"])
def test_fit_signature_matches_the_cpp_options(fit):
    options = _options(fit)
    assert set(options) == set(CPP) - DERIVED - CPP_ONLY
    for name, default in options.items():
        expected = PYTHON_DEFAULTS[fit].get(name, None if name in NONE_MEANS_DEFAULT else CPP[name])
        assert default == expected, f"{fit.__module__}.fit: {name}={default!r}, C++ default {CPP[name]!r}"


@pytest.mark.parametrize("evaluate", [torchtl.engine.evaluate, torchtl.reference.evaluate], ids=["engine", "reference"])
def test_evaluate_signature_matches_the_cpp_options(evaluate):
    options = _options(evaluate)
    if evaluate is torchtl.reference.evaluate:
        assert options.pop("class_weights") is None  # only the twin's evaluation weighs its loss
    assert set(options) <= set(CPP)
    for name, default in options.items():
        assert default == (None if name in NONE_MEANS_DEFAULT else CPP[name]), name


def test_the_engine_and_its_twin_take_the_same_arguments():
    for engine, twin in ((torchtl.engine.fit, torchtl.reference.fit),
                         (torchtl.engine.evaluate, torchtl.reference.evaluate)):
        a, b = inspect.signature(engine).parameters, inspect.signature(twin).parameters
        assert set(a) <= set(b)
        assert [n for n in b if n in a] == list(a), "the same order"


def test_the_binding_takes_typed_keywords_with_the_cpp_defaults():
    assert CPP["lr"] == 0.01 and CPP["task"] == "classification" and CPP["process_group"] is None
    assert CPP["class_weights"] is None and CPP["param_groups"] == []
    model = torchtl.models.resnet18(num_classes=2)
    with pytest.raises(TypeError):
        _C.engine.fit(model._cpp, [], None, None, None, no_such_option=1)
    with pytest.raises(TypeError):
        _C.engine.evaluate(model._cpp, [], None, lr="fast")
    with pytest.raises(AttributeError):
        _C.engine.ParamGroup().no_such_hyperparameter = 1.0


def test_string_option_values_are_the_cpp_choices():
    """The torchtl command writes the values out (its --help loads no torch); they must be C++'s."""
    from torchtl.tools import cli

    choices = _C.engine.FIT_CHOICES
    assert set(choices) == {"task", "mode", "optimizer", "lr_schedule", "amp"}
    assert set(choices) <= set(CPP)
    written = {"task": cli.TASKS, "mode": cli.MODES, "optimizer": cli.OPTIMIZERS, "lr_schedule": cli.SCHEDULERS,
               "amp": cli.AMP}
    for name, values in written.items():
        assert list(values) == list(choices[name]), name
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0].choices
    for task in choices["task"]:
        actions = {a.dest: a for a in train[task]._actions}
        assert list(actions["mode"].choices) == choices["mode"]
        assert set(actions["opt"].choices) == set(choices["optimizer"]) | {"sgd_nesterov"}
        assert list(actions["lr_scheduler"].choices) == choices["lr_schedule"]
        assert list(actions["amp"].choices) == choices["amp"]


@pytest.mark.parametrize("option,value", [("mode", "scratchy"), ("optimizer", "lamb"), ("lr_schedule", "linear"),
                                          ("amp", "fp8")])
def test_a_value_outside_the_choices_is_named_in_the_error(option, value):
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
    listed = ", ".join(_C.engine.FIT_CHOICES[option][:-1]) + " or " + _C.engine.FIT_CHOICES[option][-1]
    with pytest.raises(ValueError, match=f"unknown {option} '{value}'; choose {listed}"):
        torchtl.engine.fit(model, data, epochs=1, progress=False, device="cpu", **{option: value})
