#pragma once
// Reading what Python's torch.save writes, from C++. libtorch's own torch::pickle_load turns a
// collections.OrderedDict into None, and every model.state_dict() is one, so it cannot open the
// most common weights file there is (pytorch/pytorch#100741). This reader understands the
// objects weights files and checkpoints hold and refuses anything else by name.
#include <ATen/core/ivalue.h>

#include <string>

namespace torchtl::io {

// The object a torch.save zip archive holds: dicts (ordered or not, keys in file order), lists,
// tuples, strings, numbers, booleans, None, and tensors or parameters (as CPU tensors, wherever
// they were saved). Throws, naming the path, for other Python objects or a damaged file.
c10::IValue read_torch_save(const std::string& path);

}  // namespace torchtl::io
