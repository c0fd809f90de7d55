"""Every code block of README.md and of the pages in docs/ runs as pasted.

``python`` blocks run each in a fresh interpreter, ``sh`` blocks in bash with ``torchtl`` on the
PATH, all in one folder, README first and then the pages in PAGES order (later blocks use the files
earlier ones write), that holds the data they name (a small ImageFolder tree
``hymenoptera_data``, a VOC-layout set with ``voc_train.txt``/``voc_val.txt``, and weights files).
A block the test does not run is preceded by ``<!-- not run by tests/test_readme.py: REASON -->``.
"""
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + [f"docs/{name}.md" for name in ("data", "training", "command_line", "models", "cpp", "performance",
                                                                  "deployment")]
SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (.+?) -->\s*$")


def test_every_page_of_docs_is_run():
    assert sorted(PAGES[1:]) == sorted(f"docs/{name}" for name in os.listdir(os.path.join(ROOT, "docs")))


def blocks():
    """(where, language, code, reason not run or None) for each fenced block of every page."""
    return [block for page in PAGES for block in page_blocks(page)]


def page_blocks(page):
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.match(before)
        found.append((f"{page}:{i + 1}", fence.group(1), "\n".join(lines[i + 1:end]) + "\n", skip and skip.group(1)))
        i = end + 1
    return found


def test_every_block_says_what_it_is():
    all_blocks = blocks()
    assert all_blocks
    for line, language, _, _ in all_blocks:
        # cmake, cpp and json blocks are shown, never run (ctest builds the C++ ones, see below).
        assert language in ("python", "sh", "cmake", "cpp", "json"), f"{line}: a block must be marked python or sh"
    for line, language, _, reason in all_blocks:
        assert language in ("python", "sh") or reason, f"{line}: a {language} block is never run: say why"
    ran = [b for b in all_blocks if b[3] is None]
    assert {b[1] for b in ran} == {"python", "sh"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The data and weights the README's blocks name, small."""
    import torchvision
    from torchvision.io import write_jpeg

    import torchtl
    from torchtl.tools import demo_data

    root = tmp_path_factory.mktemp("readme")
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in ("ants", "bees"):
            os.makedirs(root / "hymenoptera_data" / split / c)
            for i in range(2):
                image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=generator)
                write_jpeg(image, str(root / "hymenoptera_data" / split / c / f"{i}.jpg"))
    voc = root / "voc"
    demo_data.make_segmentation_set(voc, train=2, val=1, size=40, seed=0)
    for split in ("train", "val"):
        torchtl.data.write_map_file(voc, root / f"voc_{split}.txt", layout="voc", split=split)
    torch.save(torchvision.models.resnet18().state_dict(), root / "my_resnet18.pth")
    torchtl.export_traced(torchtl.models.resnet18(), str(root / "resnet18_traced.pt"), torch.randn(1, 3, 64, 64))
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    command = bin_dir / "torchtl"  # the console script of this checkout
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torchtl "$@"\n')
    command.chmod(command.stat().st_mode | stat.S_IEXEC)
    return root


def test_blocks_run_as_pasted(folder):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "PATH": f"{folder / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line, language, code, skipped in blocks():
        if skipped:
            continue
        argv = [sys.executable, "-c", code] if language == "python" else ["bash", "-e", "-c", code]
        r = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, f"{line} ({language}) failed:\n{code}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # What the blocks say they write.
    for path in ("train.txt", "train_classes.txt", "val.txt", "runs/ants_bees/best.pt", "runs/ants/best.pt",
                 "runs/ants/config.json", "runs/quick/best.pt", "runs/cli/best.pt"):
        assert (folder / path).is_file(), path


def test_the_readme_cpp_blocks_are_the_consumer_that_ctest_builds():
    """The README's C++ main and CMake lines are examples/cpp/consumer's, which ctest install.consumer builds."""
    consumer = os.path.join(ROOT, "examples", "cpp", "consumer")
    by_language = {}
    for _, language, code, _ in page_blocks("README.md"):
        by_language.setdefault(language, []).append(code)
    with open(os.path.join(consumer, "main.cpp")) as f:
        assert by_language["cpp"] == [f.read()]
    with open(os.path.join(consumer, "CMakeLists.txt")) as f:
        cmake = f.read().splitlines()
    (lines,) = by_language["cmake"]
    assert all(line in cmake for line in lines.splitlines()), lines
