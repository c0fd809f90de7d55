"""The C++ example programs take the `torchtl` command's option names and defaults.

usage: cli_defaults.py TRANSFER_LEARNING SEGMENTATION PREDICT (the built programs)

Each program's --help is compared with the parser of the command it mirrors: every option of a
program exists there and the program accepts all of its names, and every default both state is equal.
"""
import argparse
import re
import subprocess
import sys

from torchtl.tools import cli

MIRRORS = {"transfer_learning": ("train", "classification"), "segmentation": ("train", "segmentation"),
           "predict": ("predict",)}
# segmentation's --aux on|off is its older form of --aux-loss.
OWN_OPTIONS = {"segmentation": {"--aux"}}


def program_options(path):
    """{long name: (all names, shown default or None)} from the program's --help."""
    text = subprocess.run([path, "--help"], capture_output=True, text=True, check=True).stdout
    options = {}
    for names, help_text in re.findall(r"^  (-[^\n]*)\n        ([^\n]*)", text, flags=re.M):
        flags = [n.split(" ")[0] for n in names.split(", ")]
        if flags == ["-h"]:
            continue
        default = re.search(r"\(default: ([^)]*)\)$", help_text)
        options[next(f for f in flags if f.startswith("--"))] = (set(flags), default and default.group(1))
    assert options, f"no options found in the --help of {path}:\n{text}"
    return options


def subparser(parser, path):
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def same(a, b):
    try:
        return float(a) == float(b)
    except ValueError:
        return str(a) == str(b)


def main(paths):
    parser = cli.build_parser()
    problems = []
    for path in paths:
        program = re.sub(r"\.exe$", "", path.replace("\\", "/").rsplit("/", 1)[-1])
        python = subparser(parser, MIRRORS[program])
        by_flag = {flag: action for action in python._actions for flag in action.option_strings}
        for name, (flags, default) in program_options(path).items():
            if name in OWN_OPTIONS.get(program, ()):
                continue
            action = by_flag.get(name)
            if action is None:
                problems.append(f"{program} {name}: `torchtl {' '.join(MIRRORS[program])}` has no such option")
                continue
            if not set(action.option_strings) <= flags:  # the programs may keep older names besides
                problems.append(f"{program} {name}: names {sorted(flags)}, torchtl: {action.option_strings}")
            # A default of None in torchtl is derived (from config.json, the weights, ...).
            if default is not None and action.default is not None and not same(default, action.default):
                problems.append(f"{program} {name}: default {default}, torchtl: {action.default}")
        print(f"{program}: checked against `torchtl {' '.join(MIRRORS[program])}`")
    if problems:
        sys.exit("\n".join(problems))


if __name__ == "__main__":
    main(sys.argv[1:])
