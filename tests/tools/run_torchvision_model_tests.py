"""Runs torchvision's own model tests against torchtl's builders.

torchvision's ``test/test_models.py`` (the CPU parametrizations of the ResNet family, the four
ResNet segmentation models and ``test_resnet_dilation``) and the ResNet tests of
``test/test_backbone_utils.py`` are run unchanged, from a pytorch/vision checkout, with
torchvision's builder lookup (``torchvision.models.<name>``, ``get_model_builder``, the builders
``resnet_fpn_backbone`` reads) pointed at torchtl's. Nothing of torchvision's is copied here.

    python tests/tools/run_torchvision_model_tests.py --vision-src ~/src/vision
    python tests/tools/run_torchvision_model_tests.py --vision-src ~/src/vision --builders torchvision  # control
    python tests/tools/run_torchvision_model_tests.py --vision-src ~/src/vision --exact-mode

The fast path (torchtl's default) rounds differently from torchvision's Python forward, which
fx, TorchScript and torchvision's own wrappers run; torchvision's tests compare the two with
default (or bitwise) tolerances, so the deepest models need --exact-mode to pass.

A checkout carries the expected outputs (``test/expect/*.pkl``). ``--make-expect`` first (re)writes
those of the selected tests by running torchvision's own builders with ``EXPECTTEST_ACCEPT=1``, for
a checkout without them: torchtl is then compared with torchvision on this machine.
"""
import argparse
import os
import subprocess
import sys
import tempfile

SELECTIONS = {
    # test_resnet_dilation has no device parameter, so it is selected outside "cpu and".
    "test_models.py": "(cpu and ((test_classification_model and (resnet or resnext)) "
                      "or (test_segmentation_model and resnet))) or test_resnet_dilation",
    "test_backbone_utils.py": "resnet or resnext or test_feature_extraction_methods_equivalence",
}

# Loaded by pytest before torchvision's test modules are collected (their parametrizations read the
# builder registry at import time).
PLUGIN = '''
import functools

import torchvision
from torchvision.models import _api

import torchtl

EXACT = {exact}


def _as_torchvision(builder, module):
    @functools.wraps(builder)
    def build(*args, **kwargs):
        return builder(*args, **kwargs)

    build.__module__ = module.__name__ + "._torchtl"  # list_models() filters on the module
    return build


def pytest_configure(config):
    if EXACT:
        torchtl.set_exact_mode(True)  # per thread: pytest runs the tests on this one
    for namespace, modules in ((torchtl.models, (torchvision.models, torchvision.models.resnet)),
                               (torchtl.segmentation, (torchvision.models.segmentation,))):
        for name in namespace.__all__:
            if name[0].isupper():
                continue
            build = _as_torchvision(getattr(namespace, name), modules[0])
            _api.BUILTIN_MODELS[name] = build
            for module in modules:
                setattr(module, name, build)
'''


def run(vision_src: str, builders: str, accept: bool, extra: list, exact: bool = False) -> int:
    test_dir = os.path.join(vision_src, "test")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [test_dir, os.environ.get("PYTHONPATH")])))
    if accept:
        env["EXPECTTEST_ACCEPT"] = "1"
    worst = 0
    with tempfile.TemporaryDirectory() as plugin_dir:
        args = []
        if builders == "torchtl":
            with open(os.path.join(plugin_dir, "torchtl_builders.py"), "w") as f:
                f.write(PLUGIN.replace("{exact}", str(exact)))
            env["PYTHONPATH"] = os.pathsep.join([plugin_dir, env["PYTHONPATH"]])
            args = ["-p", "torchtl_builders"]
        for test_file, selection in SELECTIONS.items():
            if accept and test_file != "test_models.py":
                continue
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                       os.path.join(test_dir, test_file), "-k", selection, *extra]
            print("$", " ".join(command), flush=True)
            worst = max(worst, subprocess.call(command, cwd=vision_src, env=env))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision-src", required=True, help="a pytorch/vision checkout (its test/ directory is used)")
    parser.add_argument("--builders", choices=["torchtl", "torchvision"], default="torchtl")
    parser.add_argument("--make-expect", action="store_true",
                        help="first write missing expect files from torchvision's own builders")
    parser.add_argument("--exact-mode", action="store_true",
                        help="run torchtl's models in exact mode (torchtl.exact_mode()) instead of the fast path")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.vision_src, "test", "test_models.py")):
        parser.error(f"{args.vision_src} is not a pytorch/vision checkout (no test/test_models.py)")
    if args.make_expect:
        os.makedirs(os.path.join(args.vision_src, "test", "expect"), exist_ok=True)
        run(args.vision_src, "torchvision", True, args.pytest_args)
    sys.exit(run(args.vision_src, args.builders, False, args.pytest_args, args.exact_mode))


if __name__ == "__main__":
    main()
