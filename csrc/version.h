#pragma once
// torchtl's version, as the C++ library reports it (model files record it). The same string as
// pyproject.toml's version and torchtl.__version__; tests/test_model_file.py checks that they agree,
// and CMakeLists.txt reads its project version from this line.
#define TORCHTL_VERSION "0.1.0"
