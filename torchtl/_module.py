"""The Python face of a C++ module tree.

A torchtl model is an ordinary ``torch.nn.Module`` whose tree mirrors the C++ one: containers
(ResNet, BasicBlock, Sequential, ...) are thin classes whose ``forward`` runs in C++, and leaves
are genuine ``torch.nn`` layers (Conv2d, BatchNorm2d, Linear, ...) whose parameters and buffers
are the C++ module's own tensors. So ``state_dict()``, optimizers, hooks on parameters,
``requires_grad_``, ``to()``, ``train()``/``eval()`` and ``print`` behave as on torchvision's model.

Assigning a ``torch.nn`` module to a child (``model.fc = nn.Linear(512, 2)``) builds the C++
equivalent around the very same tensors and swaps it into the C++ tree; the assigned module
then serves as the mirror, so ``model.fc is the_linear_you_assigned``.
"""
from __future__ import annotations

import torch
from torch import nn

from torchtl import _C

# torch.nn leaves and how to rebuild each from the C++ module's options.
_LEAF_TYPES = {
    "Conv2d": nn.Conv2d,
    "BatchNorm2d": nn.BatchNorm2d,
    "Linear": nn.Linear,
    "ReLU": nn.ReLU,
    "MaxPool2d": nn.MaxPool2d,
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "Dropout": nn.Dropout,
    "Identity": nn.Identity,
    "Flatten": nn.Flatten,
}


def _as_parameter(tensor: torch.Tensor) -> nn.Parameter:
    # The C++ tensor reaches Python as a plain Tensor. Re-classing the same object (not wrapping it:
    # nn.Parameter(t) would make a new TensorImpl with its own .grad) keeps gradients, optimizer
    # steps and in-place conversions shared with C++, while isinstance(p, nn.Parameter) holds.
    if type(tensor) is torch.Tensor:
        tensor.__class__ = nn.Parameter
    return tensor


def _scalar_if_uniform(values):
    return values[0] if len(set(values)) == 1 else tuple(values)


def _leaf_from_cpp(type_name: str, options: dict, cpp) -> nn.Module:
    o = dict(options)
    if type_name == "BatchNorm2d":
        o.setdefault("momentum", None)
    if type_name == "MaxPool2d":  # torchvision passes ints; keep its repr
        o = {k: _scalar_if_uniform(v) if isinstance(v, list) else v for k, v in o.items()}
    if type_name in ("Conv2d", "AdaptiveAvgPool2d"):
        o = {k: tuple(v) if isinstance(v, list) else v for k, v in o.items()}
    cls = _LEAF_TYPES[type_name]
    takes_device = type_name in ("Conv2d", "BatchNorm2d", "Linear")
    # Built on the meta device (no allocation), then handed the C++ tensors.
    leaf = cls(**o, device="meta") if takes_device else cls(**o)
    for name, _ in list(leaf._parameters.items()):
        leaf._parameters[name] = None
    for name, tensor in cpp.named_parameters():
        leaf._parameters[name] = _as_parameter(tensor)
    for name, tensor in cpp.named_buffers():
        leaf._buffers[name] = tensor
    return leaf


def _leaf_options(module: nn.Module) -> tuple[str, dict]:
    """The C++ constructor arguments for a torch.nn leaf (the inverse of _leaf_from_cpp)."""
    for type_name, cls in _LEAF_TYPES.items():
        if type(module) is cls or (isinstance(module, cls) and type(module).forward is cls.forward):
            break
    else:
        supported = ", ".join(list(_LEAF_TYPES) + ["Sequential"])
        raise TypeError(f"torchtl can move {type(module).__name__} into C++ only if it is one of: {supported}")

    def ints(v):
        return list(v) if isinstance(v, (tuple, list)) else [v, v]

    m = module
    if type_name == "Conv2d":
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise TypeError("torchtl's C++ Conv2d takes integer padding with padding_mode='zeros'")
        return type_name, dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=ints(m.kernel_size),
                               stride=ints(m.stride), padding=ints(m.padding), dilation=ints(m.dilation),
                               groups=m.groups, bias=m.bias is not None)
    if type_name == "BatchNorm2d":
        o = dict(num_features=m.num_features, eps=float(m.eps), affine=m.affine,
                 track_running_stats=m.track_running_stats)
        if m.momentum is not None:
            o["momentum"] = float(m.momentum)
        return type_name, o
    if type_name == "Linear":
        return type_name, dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
    if type_name == "ReLU":
        return type_name, dict(inplace=m.inplace)
    if type_name == "MaxPool2d":
        stride = m.stride if m.stride is not None else m.kernel_size
        return type_name, dict(kernel_size=ints(m.kernel_size), stride=ints(stride), padding=ints(m.padding),
                               dilation=ints(m.dilation), ceil_mode=m.ceil_mode)
    if type_name == "AdaptiveAvgPool2d":
        if m.output_size is None or (isinstance(m.output_size, tuple) and None in m.output_size):
            raise TypeError("torchtl's C++ AdaptiveAvgPool2d needs a full output_size")
        return type_name, dict(output_size=ints(m.output_size))
    if type_name == "Dropout":
        return type_name, dict(p=float(m.p), inplace=m.inplace)
    if type_name == "Flatten":
        return type_name, dict(start_dim=m.start_dim, end_dim=m.end_dim)
    return type_name, {}


def to_cpp(module: nn.Module):
    """A C++ module built around ``module``'s own tensors."""
    cpp = getattr(module, "_cpp", None)
    if cpp is not None:
        return cpp
    if isinstance(module, nn.Sequential):
        return _C.make_sequential([to_cpp(child) for child in module])
    type_name, options = _leaf_options(module)
    cpp = _C.make_module(type_name, options)
    params = [(n, p) for n, p in module._parameters.items() if p is not None]
    buffers = [(n, b) for n, b in module._buffers.items() if b is not None]
    cpp.adopt_tensors(params, buffers)
    return cpp


class _Tree:
    """State shared by every mirror of one C++ model: the module pairing and the edits made."""

    def __init__(self, cpp_root):
        self.cpp_root = cpp_root
        self.py_root = None
        self.edits = []  # replayed when a pickled model is rebuilt
        self._pairs = None
        self._flags = None

    def invalidate(self):
        self._pairs = None
        self._flags = None

    def pairs(self):
        """(python module, C++ module) in C++ pre-order, the order of Module::modules()."""
        if self._pairs is None:
            out = []

            def walk(py, cpp):
                out.append((py, cpp))
                for name, child in cpp.named_children():
                    walk(py._modules[name], child)

            walk(self.py_root, self.cpp_root)
            self._pairs = out
        return self._pairs

    def sync_training(self):
        # train()/eval() may be called on any submodule (a frozen BatchNorm, say): mirror the flags.
        flags = [py.training for py, _ in self.pairs()]
        if flags != self._flags:
            self.cpp_root.sync_training(flags)
            self._flags = flags

    def push_tensors(self, subtree):
        # Module._apply (to(), half(), cuda(), ...) replaces buffer objects (and, in some modes,
        # parameters) on the Python side; hand the new ones to C++.
        inside = {id(m) for m in subtree.modules()}
        for py, cpp in self.pairs():
            if id(py) not in inside:
                continue
            params = [(n, p) for n, p in py._parameters.items() if p is not None]
            buffers = [(n, b) for n, b in py._buffers.items() if b is not None]
            if params or buffers:
                cpp.adopt_tensors(params, buffers)

    def path_of(self, module):
        for name, m in self.py_root.named_modules(remove_duplicate=False):
            if m is module:
                return name
        raise ValueError("module is not part of this model")


class _Mirror:
    """Behaviour shared by container mirrors (CppModule and Sequential)."""

    def _init_mirror(self, cpp, tree: _Tree):
        object.__setattr__(self, "_cpp", cpp)
        object.__setattr__(self, "_tree", tree)

    def forward(self, input):
        self._tree.sync_training()
        return self._cpp.forward(input)

    def __setattr__(self, name, value):
        if isinstance(value, nn.Module) and name in self.__dict__.get("_modules", {}) and "_cpp" in self.__dict__:
            self._replace_child(name, value)
        else:
            super().__setattr__(name, value)

    def _replace_child(self, name, module):
        self._cpp.replace_child(name, to_cpp(module))
        for p_name, p in list(module._parameters.items()):
            if p is not None and not isinstance(p, nn.Parameter):
                module._parameters[p_name] = _as_parameter(p)
        nn.Module.__setattr__(self, name, module)
        tree = self._tree
        path = tree.path_of(self)
        tree.edits.append(("set", f"{path}.{name}" if path else name, module))
        tree.invalidate()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._tree.push_tensors(self)
        return self

    def __reduce_ex__(self, protocol):
        raise TypeError(f"a {self._get_name()} inside a torchtl model cannot be copied or pickled on its own; "
                        "copy or pickle the whole model")


class CppModule(_Mirror, nn.Module):
    """A C++ container (ResNet, BasicBlock, ...) as a torch.nn.Module; forward runs in C++."""

    def __init__(self, cpp, type_name: str, tree: _Tree):
        nn.Module.__init__(self)
        self._init_mirror(cpp, tree)
        object.__setattr__(self, "_type_name", type_name)

    def _get_name(self):
        return self._type_name


class Sequential(_Mirror, nn.Sequential):
    """torch::nn::Sequential as an nn.Sequential; forward runs in C++."""

    def __init__(self, cpp, tree: _Tree, type_name: str = "Sequential"):
        nn.Sequential.__init__(self)
        self._init_mirror(cpp, tree)
        object.__setattr__(self, "_type_name", type_name)  # DeepLabHead, FCNHead, ASPPConv, ...

    def _get_name(self):
        return self._type_name

    def __setitem__(self, idx, module):
        name = str(range(len(self))[idx]) if isinstance(idx, int) else str(idx)
        setattr(self, name, module)


class ModuleList(_Mirror, nn.ModuleList):
    """torch::nn::ModuleList as an nn.ModuleList (its owner runs it)."""

    def __init__(self, cpp, tree: _Tree):
        nn.ModuleList.__init__(self)
        self._init_mirror(cpp, tree)

    def forward(self, input):
        raise NotImplementedError("ModuleList has no forward; its owner runs its modules")


def mirror(cpp, tree: _Tree, container_classes=None) -> nn.Module:
    """The Python module tree for a C++ module tree."""
    type_name, options, container = cpp.describe()
    if type_name in _LEAF_TYPES:
        return _leaf_from_cpp(type_name, options, cpp)
    if container == "Sequential":
        module = Sequential(cpp, tree, type_name)
    elif container == "ModuleList":
        module = ModuleList(cpp, tree)
    else:
        cls = (container_classes or {}).get(type_name, CppModule)
        module = cls(cpp, type_name, tree)
    for name, tensor in cpp.named_parameters():
        module._parameters[name] = _as_parameter(tensor)
    for name, tensor in cpp.named_buffers():
        module._buffers[name] = tensor
    for name, child in cpp.named_children():
        nn.Module.__setattr__(module, name, mirror(child, tree, container_classes))
    return module


def wrap(cpp, root_class, container_classes=None, **attributes):
    """Mirrors a whole C++ model with ``root_class`` (a CppModule subclass) at the top."""
    tree = _Tree(cpp)
    type_name = cpp.describe()[0]
    root = root_class(cpp, type_name, tree)
    for key, value in attributes.items():
        object.__setattr__(root, key, value)
    for name, child in cpp.named_children():
        nn.Module.__setattr__(root, name, mirror(child, tree, container_classes))
    tree.py_root = root
    return root


def _set_by_path(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


class Model(CppModule):
    """Root of a torchtl model: pickling, deepcopy and torchvision twins.

    Subclasses set ``_builder = (module, function, kwargs)``, the builder call that recreates the
    architecture; pickling stores that call, the child replacements made since, and the state
    dict, so ``torch.save(model)``/``torch.load`` and ``copy.deepcopy`` rebuild the C++ modules.
    """

    _builder: tuple

    def __reduce_ex__(self, protocol):
        frozen = [name for name, p in self.named_parameters() if not p.requires_grad]
        return (_rebuild_model, (self._builder, list(self._tree.edits), self.state_dict(), frozen, self.training))

    def _replay_edits(self, target: nn.Module) -> None:
        """Applies this model's child replacements to ``target`` (a torchvision twin)."""
        import copy

        for kind, *args in self._tree.edits:
            if kind == "set":
                path, module = args
                _set_by_path(target, path, copy.deepcopy(module))
            else:
                self._replay_special(target, kind, *args)

    def _replay_special(self, target, kind, *args):
        raise ValueError(f"unknown model edit {kind!r}")


def _rebuild_model(builder, edits, state, frozen, training):
    import importlib

    module_name, function, kwargs = builder
    model = getattr(importlib.import_module(module_name), function)(**kwargs)
    for kind, *args in edits:
        if kind == "set":
            _set_by_path(model, *args)
        else:
            getattr(model, kind)(*args)
    first = next((t for t in state.values() if t.is_floating_point()), None)
    if first is not None:
        model.to(device=first.device, dtype=first.dtype)
    model.load_state_dict(state)
    frozen = set(frozen)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return model.train(training)
