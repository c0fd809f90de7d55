"""Prints, for CMakeLists.txt, the path of TorchCodec's image library (libtorchcodec_image.so),
which a C++ program loads at run time to decode images (csrc/data/image.cpp). That library links
torch but not libpython, so the programs need no Python at run time. Found without importing
torchcodec, whose import also probes for FFmpeg; exits 1 when torchcodec is not installed."""
import importlib.util
import os
import sys

spec = importlib.util.find_spec("torchcodec")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
library = os.path.join(list(spec.submodule_search_locations)[0], "libtorchcodec_image.so")
if not os.path.isfile(library):
    sys.exit(1)
print(library)
