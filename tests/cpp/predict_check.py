"""A model trained by a C++ program predicts from its best.pt alone, in C++ and in Python, as plain Python does.

usage: predict_check.py PREDICT CLS_BEST CLS_MAP SEG_BEST SEG_MAP WORK_DIR

PREDICT is the built predict program. For the classifier, its --json lines (the default fast path)
agree with torchvision + transforms.v2 within the fast path's rounding and on every top-1, and
torchtl.Predictor in exact mode equals them bit for bit; for the segmenter, the same for its masks.
"""
import json
import os
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torchtl  # noqa: E402
from torchtl import data  # noqa: E402
from predict_reference import python_classify, python_segment  # noqa: E402


def check_classifier(program, best, map_file):
    images = [e[0] for e in data.MapDataset(map_file).samples]
    lines = subprocess.run([program, "--checkpoint", best, map_file, "--json", "--topk", "2", "--device", "cpu"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    got = [json.loads(line) for line in lines]
    assert [g["image"] for g in got] == images, (got, images)
    values, indices = python_classify(best, images, topk=2)
    for row, g in enumerate(got):
        assert [p["index"] for p in g["predictions"]][0] == indices[row, 0].item(), (g, indices[row])
        probs = torch.tensor([p["probability"] for p in g["predictions"]], dtype=torch.float32)
        torch.testing.assert_close(probs, values[row], rtol=1e-3, atol=1e-4)
    with torchtl.exact_mode():
        exact = torchtl.Predictor(best, device="cpu").classify(images, topk=2)
    for row, predictions in enumerate(exact):
        assert [p.index for p in predictions] == indices[row].tolist()
        assert torch.equal(torch.tensor([p.probability for p in predictions], dtype=torch.float32), values[row])
    print(f"classifier {best}: {len(images)} images agree")


def check_segmenter(program, best, map_file, work):
    images = [e[0] for e in data.SegmentationMapDataset(map_file).samples]
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run([program, "--checkpoint", best, map_file, "--json", "--out", work, "--device", "cpu"],
                   capture_output=True, text=True, check=True)
    expected = python_segment(best, images)
    for path, want in zip(images, expected):
        mask = data.read_mask(os.path.join(work, os.path.splitext(os.path.basename(path))[0] + "_mask.png")).long()
        assert mask.shape == want.shape, (path, mask.shape, want.shape)
        assert (mask != want).float().mean().item() <= 1e-3, path
    with torchtl.exact_mode():
        exact = torchtl.Predictor(best, device="cpu").segment(images)
    for path, got, want in zip(images, exact, expected):
        assert torch.equal(got, want), path
    print(f"segmenter {best}: {len(images)} masks agree")


def main(program, cls_best, cls_map, seg_best, seg_map, work):
    check_classifier(program, cls_best, cls_map)
    check_segmenter(program, seg_best, seg_map, work)


if __name__ == "__main__":
    main(*sys.argv[1:])
