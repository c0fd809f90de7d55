"""Prints, for CMakeLists.txt, `<torchvision image library>;<libpython>`: what a C++ program
loads at run time to decode images with torchvision's ops (csrc/data/image.cpp).

torch.ops.loaded_libraries holds what `import torchvision.io` loaded: image_stable.so in
torchvision >= 0.28, image.so before. That library links libtorch_python, whose Python symbols
come from libpython (empty when this Python is linked statically)."""
import os
import sysconfig

import torch
import torchvision.io  # noqa: F401  (loads the image library)

images = sorted(p for p in torch.ops.loaded_libraries if os.path.basename(p).startswith("image"))
python = ""
if sysconfig.get_config_var("Py_ENABLE_SHARED"):
    python = os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY"))
print((images[0] if images else "") + ";" + python)
