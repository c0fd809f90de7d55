"""The Python face of a C++ module tree.

A torchtl model is an ordinary ``torch.nn.Module`` whose tree mirrors the C++ one. Containers are
torchvision's own classes (``ResNet``, ``BasicBlock``, ``Bottleneck``, ``IntermediateLayerGetter``,
``DeepLabHead``, ``ASPP``, ...; subclassed, not rewritten), and leaves are genuine ``torch.nn``
layers (and ``torchvision.ops.FrozenBatchNorm2d``) whose parameters and buffers are the C++
module's own tensors, the same objects. So ``state_dict()``, optimizers, ``to()``,
``train()``/``eval()`` and ``print`` behave as on torchvision's model.

Which forward runs:

- **C++** for a plain call (``model(x)`` or ``model.layer1(x)``) when the C++ tree computes exactly
  what torchvision's Python code would: the input is a plain ``torch.Tensor``; nothing is tracing,
  scripting, compiling or exporting; no global module hooks and no ``__torch_function__`` mode or
  ``torch.func`` transform are active; and below the module called, no module has forward,
  pre-forward or backward hooks, no module changed class (``nn.utils.parametrize``), no child was
  replaced by something C++ does not hold (``_modules[...] = ...``, ``quantize_dynamic``,
  ``m.fc = None``, ``del m.fc``, a layer C++ has no twin for), and no option the forward reads
  (stride, eps, inplace, ...) changed. Hooks on the called module itself fire as usual. A tensor
  put in place of a parameter or buffer (``m.fc.weight = nn.Parameter(...)``, or the tensors of
  ``torch.func.functional_call``) is handed to C++ before the call when it has the same shape, so
  gradients reach the tensor that was put there.
- **Python**, torchvision's own ``forward`` over the same tensors, in every other case: hooks fire at
  every depth, parametrizations apply, replaced children run, and fx (``symbolic_trace``,
  ``create_feature_extractor``), ``torch.jit.trace``, ``torch.compile`` (``fullgraph=True`` too) and
  ``torch.export`` see every operation and hold the weights as parameters.
- ``torch.jit.script`` compiles torchvision's own classes holding the same tensors
  (``__prepare_scriptable__``).

Assigning a layer to a child (``model.fc = nn.Linear(512, 2)``) builds the C++ equivalent around
the very same tensors when C++ has one; otherwise the layer runs in Python. The C++ training loops
(``torchtl.engine``) take ``model._cpp``, which raises when the C++ tree cannot stand for the
Python one (a child only Python holds, hooks that C++ would not fire).
"""
from __future__ import annotations

import operator
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.modules import module as _torch_module
from torchvision.ops import FrozenBatchNorm2d

from torchtl import _C

# torch.nn leaves C++ builds, by the C++ type name.
_LEAF_TYPES = {
    "Conv2d": nn.Conv2d,
    "BatchNorm2d": nn.BatchNorm2d,
    "FrozenBatchNorm2d": FrozenBatchNorm2d,
    "Linear": nn.Linear,
    "ReLU": nn.ReLU,
    "MaxPool2d": nn.MaxPool2d,
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "Dropout": nn.Dropout,
    "Identity": nn.Identity,
    "Flatten": nn.Flatten,
    "Sigmoid": nn.Sigmoid,
    "Softmax": nn.Softmax,
    "LogSoftmax": nn.LogSoftmax,
    "Tanh": nn.Tanh,
    "Upsample": nn.Upsample,
    "AdaptiveMaxPool2d": nn.AdaptiveMaxPool2d,
    "Dropout2d": nn.Dropout2d,
    "GroupNorm": nn.GroupNorm,
    "ConvTranspose2d": nn.ConvTranspose2d,
}

# What each leaf's forward reads besides its tensors. C++ holds its own copy of these, so a change
# on the Python side sends the call to Python.
_FORWARD_OPTIONS = {
    nn.Conv2d: ("stride", "padding", "dilation", "groups", "padding_mode"),
    nn.BatchNorm2d: ("eps", "momentum", "track_running_stats"),
    nn.SyncBatchNorm: ("eps", "momentum", "track_running_stats", "process_group"),
    FrozenBatchNorm2d: ("eps",),
    nn.Linear: (),
    nn.ReLU: ("inplace",),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.Dropout: ("p", "inplace"),
    nn.Identity: (),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Sigmoid: (),
    nn.Softmax: ("dim",),
    nn.LogSoftmax: ("dim",),
    nn.Tanh: (),
    nn.Upsample: ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"),
    nn.AdaptiveMaxPool2d: ("output_size", "return_indices"),
    nn.Dropout2d: ("p", "inplace"),
    nn.GroupNorm: ("num_groups", "eps"),
    nn.ConvTranspose2d: ("stride", "padding", "output_padding", "dilation", "groups", "padding_mode"),
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


def _leaf_from_cpp(type_name: str, options: dict, cpp, leaf_classes: dict) -> nn.Module:
    o = dict(options)
    if type_name == "BatchNorm2d":
        o.setdefault("momentum", None)
    if type_name == "MaxPool2d":  # torchvision passes ints; keep its repr
        o = {k: _scalar_if_uniform(v) if isinstance(v, list) else v for k, v in o.items()}
    if type_name in ("Conv2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "ConvTranspose2d"):
        o = {k: tuple(v) if isinstance(v, list) else v for k, v in o.items()}
    cls = leaf_classes.get(type_name, _LEAF_TYPES[type_name])
    takes_device = type_name in ("Conv2d", "BatchNorm2d", "Linear", "GroupNorm", "ConvTranspose2d")
    # Built on the meta device (no allocation), then handed the C++ tensors.
    leaf = cls(**o, device="meta") if takes_device else cls(**o)
    for name in list(leaf._parameters):
        leaf._parameters[name] = None
    for name, tensor in cpp.named_parameters():
        leaf._parameters[name] = _as_parameter(tensor)
    for name, tensor in cpp.named_buffers():
        leaf._buffers[name] = tensor
    return leaf


def _leaf_options(module: nn.Module) -> tuple[str, dict]:
    """The C++ constructor arguments for a torch.nn leaf (the inverse of _leaf_from_cpp)."""
    kind = type(module)
    if kind is nn.SyncBatchNorm:  # one process: the C++ BatchNorm2d computes the same
        type_name = "BatchNorm2d"
    else:
        type_name = next((name for name, cls in _LEAF_TYPES.items() if kind is cls), None)
    if type_name is None:
        supported = ", ".join(list(_LEAF_TYPES) + ["SyncBatchNorm", "Sequential"])
        raise TypeError(f"torchtl has no C++ {kind.__name__}; C++ holds: {supported}")

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
    if type_name == "FrozenBatchNorm2d":
        return type_name, dict(num_features=int(m.weight.shape[0]), eps=float(m.eps))
    if type_name == "Linear":
        return type_name, dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
    if type_name == "ReLU":
        return type_name, dict(inplace=m.inplace)
    if type_name == "MaxPool2d":
        if m.return_indices:
            raise TypeError("torchtl's C++ MaxPool2d does not return indices")
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
    if type_name in ("Softmax", "LogSoftmax"):
        if m.dim is None:
            raise TypeError(f"torchtl's C++ {type_name} needs an explicit dim")
        return type_name, dict(dim=m.dim)
    if type_name == "Upsample":
        if m.size is not None or m.scale_factor is None or isinstance(m.scale_factor, tuple) or m.recompute_scale_factor:
            raise TypeError("torchtl's C++ Upsample takes one scale_factor, no size")
        o = dict(scale_factor=float(m.scale_factor), mode=m.mode)
        if m.align_corners is not None:
            o["align_corners"] = bool(m.align_corners)
        return type_name, o
    if type_name == "AdaptiveMaxPool2d":
        if m.return_indices or m.output_size is None or (isinstance(m.output_size, tuple) and None in m.output_size):
            raise TypeError("torchtl's C++ AdaptiveMaxPool2d needs a full output_size and returns no indices")
        return type_name, dict(output_size=ints(m.output_size))
    if type_name == "Dropout2d":
        return type_name, dict(p=float(m.p), inplace=m.inplace)
    if type_name == "GroupNorm":
        return type_name, dict(num_groups=m.num_groups, num_channels=m.num_channels, eps=float(m.eps), affine=m.affine)
    if type_name == "ConvTranspose2d":
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise TypeError("torchtl's C++ ConvTranspose2d takes integer padding with padding_mode='zeros'")
        return type_name, dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=ints(m.kernel_size),
                               stride=ints(m.stride), padding=ints(m.padding), output_padding=ints(m.output_padding),
                               dilation=ints(m.dilation), groups=m.groups, bias=m.bias is not None)
    return type_name, {}


def to_cpp(module: nn.Module):
    """A C++ module built around ``module``'s own tensors; TypeError when C++ has no twin for it."""
    cpp = module.__dict__.get("_cpp_module")
    if cpp is not None:
        return cpp
    if torch.nn.utils.parametrize.is_parametrized(module):
        raise TypeError("a parametrized module runs in Python only")
    if type(module) is nn.Sequential:
        return _C.make_sequential([to_cpp(child) for child in module])
    type_name, options = _leaf_options(module)
    cpp = _C.make_module(type_name, options)
    params = [(n, p) for n, p in module._parameters.items() if p is not None]
    buffers = [(n, b) for n, b in module._buffers.items() if b is not None]
    cpp.adopt_tensors(params, buffers)
    return cpp


def _is_plain_call(input) -> bool:
    """True when nothing but the C++ forward's own result can be observed from this call."""
    return not (
        torch.compiler.is_compiling()
        or type(input) is not torch.Tensor
        or torch.jit.is_tracing()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or _torch_module._global_forward_hooks
        or _torch_module._global_forward_pre_hooks
        or _torch_module._global_backward_hooks
        or _torch_module._global_backward_pre_hooks
    )


class _Node:
    """One C++ module, the Python module paired with it, and what the C++ side holds of it."""

    __slots__ = ("py", "cpp", "children", "type", "child_ids", "param_ids", "buffer_ids", "get_options", "options")

    def __init__(self, py: nn.Module, cpp, children: list):
        self.py = py
        self.cpp = cpp
        self.children = children  # [(name, _Node)], in C++ registration order
        self.type = type(py)
        self.child_ids = [id(child.py) for _, child in children]
        self.snapshot_tensors()
        names = _FORWARD_OPTIONS.get(self.type, getattr(self.type, "_forward_options", ()))
        self.get_options = operator.attrgetter(*names) if names else None
        self.options = self.get_options(py) if names else None

    def snapshot_tensors(self):
        self.param_ids = list(map(id, self.py._parameters.values()))
        self.buffer_ids = list(map(id, self.py._buffers.values()))


def _pair(py: nn.Module, cpp) -> _Node:
    return _Node(py, cpp, [(name, _pair(py._modules[name], child)) for name, child in cpp.named_children()])


def _same_slot(old, new) -> bool:
    # Plain tensors of the slot's shape only: a tensor subclass or a torch.func wrapper must meet
    # the Python forward. dtype and device may differ (to(), half()), as they may in torch.nn.
    return (type(new) in (torch.Tensor, nn.Parameter) and not torch._C._functorch.is_functorch_wrapped_tensor(new)
            and new.shape == old.shape)


class _Tree:
    """State shared by every mirror of one C++ model: the module pairing and the edits made."""

    def __init__(self, cpp_root):
        self.cpp_root = cpp_root
        self.root = None  # _Node of the root, set by wrap()
        self.edits = []  # replayed when a pickled model is rebuilt
        self._nodes = None
        self._span = None
        self._flags = None
        self._held = {}  # id(node.py) -> the tensors C++ holds for it, by slot

    @property
    def py_root(self):
        return self.root.py

    def invalidate(self):
        """Forget the train/eval flags C++ was last given (the engine sets its own)."""
        self._flags = None

    def _structure_changed(self):
        self._nodes = None
        self._flags = None

    def nodes(self) -> list:
        """Every node in C++ pre-order, the order of Module::modules()."""
        if self._nodes is None:
            out, span = [], {}

            def walk(node):
                start = len(out)
                out.append(node)
                for _, child in node.children:
                    walk(child)
                span[id(node.py)] = (start, len(out))

            walk(self.root)
            self._nodes, self._span = out, span
        return self._nodes

    def pairs(self):
        return [(n.py, n.cpp) for n in self.nodes()]

    def sync_training(self):
        # train()/eval() may be called on any submodule (a frozen BatchNorm, say): mirror the flags.
        flags = [n.py.training for n in self.nodes()]
        if flags != self._flags:
            self.cpp_root.set_training_flags(flags)
            self._flags = flags

    def _adopt(self, node: _Node) -> bool:
        """Hands C++ the tensors now in ``node.py``'s slots; False if C++ cannot take them."""
        py = node.py
        params = {n: t for n, t in py._parameters.items() if t is not None}
        buffers = {n: t for n, t in py._buffers.items() if t is not None}
        held = {n: t for n, t in node.cpp.named_parameters()}
        held_buffers = {n: t for n, t in node.cpp.named_buffers()}
        if set(params) != set(held) or set(buffers) != set(held_buffers):
            return False
        new_params = [(n, t) for n, t in params.items() if t is not held[n]]
        new_buffers = [(n, t) for n, t in buffers.items() if t is not held_buffers[n]]
        if not all(_same_slot(held[n], t) for n, t in new_params):
            return False
        if not all(_same_slot(held_buffers[n], t) for n, t in new_buffers):
            return False
        node.cpp.adopt_tensors(new_params, new_buffers)
        node.snapshot_tensors()
        return True

    def mismatch(self, module: nn.Module, hooks: bool = True) -> str | None:
        """Why the C++ subtree of ``module`` cannot compute what Python would, or None (after handing
        C++ any replaced tensors). Hooks on ``module`` itself count only when ``hooks`` is "all"."""
        nodes = self.nodes()
        start, stop = self._span[id(module)]
        for i in range(start, stop):
            node = nodes[i]
            py = node.py
            if hooks and (i > start or hooks == "all") and (
                    py._forward_hooks or py._forward_pre_hooks or py._backward_hooks or py._backward_pre_hooks):
                return f"{self._path(node)} has hooks"
            if type(py) is not node.type:
                return f"{self._path(node)} is now a {type(py).__name__}"
            if list(map(id, py._modules.values())) != node.child_ids:
                return f"a child of {self._path(node)} was replaced or removed outside torchtl"
            if node.get_options is not None and node.get_options(py) != node.options:
                return f"an option of {self._path(node)} changed"
            if (list(map(id, py._parameters.values())) != node.param_ids
                    or list(map(id, py._buffers.values())) != node.buffer_ids) and not self._adopt(node):
                return f"{self._path(node)} holds tensors of another shape, type or kind"
        return None

    def runs_cpp(self, module: nn.Module) -> bool:
        if self.mismatch(module) is not None:
            return False
        self.sync_training()
        return True

    def cpp_for(self, module: nn.Module, hooks="all"):
        """The C++ module of ``module`` after a full check; raises if C++ cannot stand for it."""
        reason = self.mismatch(module, hooks)
        if reason is not None:
            raise RuntimeError(f"torchtl's C++ modules cannot run this model as Python would: {reason}. "
                               "Call the model from Python instead, or undo the change")
        return module.__dict__["_cpp_module"]

    def push_tensors(self, subtree):
        # Module._apply (to(), half(), cuda(), ...) replaces buffer objects (and, in some modes,
        # parameters) on the Python side; hand the new ones to C++.
        inside = {id(m) for m in subtree.modules()}
        for node in self.nodes():
            if id(node.py) in inside and type(node.py) is node.type:
                self._adopt(node)

    def replace(self, parent: nn.Module, name: str, module: nn.Module, cpp) -> None:
        """Records that C++ now holds ``cpp`` (built around ``module``) as ``parent.name``."""
        node = self.nodes()[self._span[id(parent)][0]]
        node.children = [(n, _pair(module, cpp) if n == name else child) for n, child in node.children]
        node.child_ids = [id(child.py) for _, child in node.children]
        self._structure_changed()

    def _path(self, node: _Node) -> str:
        return self.path_of(node.py) or type(node.py).__name__

    def path_of(self, module):
        for name, m in self.root.py.named_modules(remove_duplicate=False):
            if m is module:
                return name
        raise ValueError("module is not part of this model")

    def python_edits(self) -> list:
        """Children changed outside torchtl (``_modules``, parametrize, ...), as replayable edits."""
        paths = {}
        for name, m in self.root.py.named_modules(remove_duplicate=False):
            paths.setdefault(id(m), name)
        edits = []
        for node in self.nodes():
            if id(node.py) not in paths:
                continue
            for name, child in node.children:
                path = f"{paths[id(node.py)]}.{name}" if paths[id(node.py)] else name
                current = node.py._modules.get(name, _MISSING)
                if current is _MISSING:
                    edits.append(("del", path))
                elif current is not child.py or (current is not None and type(current) is not child.type):
                    edits.append(("set", path, current))
        return edits


_MISSING = object()


class _Mirror:
    """Behaviour shared by every container mirror: the C++ fast path and child replacement.

    Subclasses set ``_torchvision_class``, whose ``forward`` is the Python path.
    """

    _torchvision_class: type = nn.Module

    @classmethod
    def _make(cls, cpp, tree: _Tree):
        # object.__new__: a root class may define __new__ as its public constructor (smp's classes).
        module = object.__new__(cls)
        nn.Module.__init__(module)
        object.__setattr__(module, "_cpp_module", cpp)
        object.__setattr__(module, "_tree", tree)
        return module

    def _finish(self):
        """Sets the plain attributes torchvision's __init__ sets; called once children exist."""

    @property
    def _cpp(self):
        return self._tree.cpp_for(self)

    def _cpp_forward(self, input):
        return self._cpp_module.forward(input)

    def forward(self, x):  # torchvision's argument name, which fx names its placeholder after
        if _is_plain_call(x) and self._tree.runs_cpp(self):
            return self._cpp_forward(x)
        return self._torchvision_class.forward(self, x)

    def __setattr__(self, name, value):
        if isinstance(value, nn.Module) and name in self.__dict__.get("_modules", {}) and "_tree" in self.__dict__:
            self._replace_child(name, value)
        else:
            super().__setattr__(name, value)

    def _replace_child(self, name, module):
        try:
            cpp = to_cpp(module)
            self._cpp_module.replace_child(name, cpp)
        except (TypeError, ValueError):
            cpp = None  # C++ has no twin for it (or not in this slot): it runs in Python
        if cpp is not None:
            for p_name, p in list(module._parameters.items()):
                if p is not None and not isinstance(p, nn.Parameter):
                    module._parameters[p_name] = _as_parameter(p)
        nn.Module.__setattr__(self, name, module)
        tree = self._tree
        if cpp is not None:
            tree.replace(self, name, module, cpp)
        path = tree.path_of(self)
        tree.edits.append(("set", f"{path}.{name}" if path else name, module))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._tree.push_tensors(self)
        return self

    def __prepare_scriptable__(self):
        # TorchScript compiles torchvision's classes, holding these very tensors.
        return _torchvision_copy(self)

    def __reduce_ex__(self, protocol):
        raise TypeError(f"a {self._get_name()} inside a torchtl model cannot be copied or pickled on its own; "
                        "copy or pickle the whole model")


def _torchvision_copy(module: nn.Module) -> nn.Module:
    """``module`` as torchvision's own classes over the same tensors, hooks and children."""
    if not isinstance(module, _Mirror):
        return module
    cls = module._torchvision_class
    twin = cls.__new__(cls)
    state = {k: v for k, v in module.__dict__.items() if k not in ("_cpp_module", "_tree")}
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {k: (_torchvision_copy(v) if v is not None else None) for k, v in module._modules.items()}
    twin.__dict__.update(state)
    return twin


class Sequential(_Mirror, nn.Sequential):
    """torch::nn::Sequential as an nn.Sequential."""

    _torchvision_class = nn.Sequential


class ModuleList(_Mirror, nn.ModuleList):
    """torch::nn::ModuleList as an nn.ModuleList (its owner runs it)."""

    _torchvision_class = nn.ModuleList

    def forward(self, input):
        raise NotImplementedError("ModuleList has no forward; its owner runs its modules")


def mirror(cpp, tree: _Tree, classes: dict, leaf_classes: dict | None = None) -> nn.Module:
    """The Python module tree for a C++ module tree. ``classes`` maps C++ container type names to
    _Mirror classes; ``leaf_classes`` overrides a leaf's torch.nn class (SyncBatchNorm)."""
    type_name, options, container = cpp.module_info()
    if type_name in _LEAF_TYPES:
        return _leaf_from_cpp(type_name, options, cpp, leaf_classes or {})
    cls = classes.get(type_name) or {"Sequential": Sequential, "ModuleList": ModuleList}.get(container)
    if cls is None:
        raise TypeError(f"torchtl has no Python class for the C++ {type_name}")
    module = cls._make(cpp, tree)
    for name, tensor in cpp.named_parameters():
        module._parameters[name] = _as_parameter(tensor)
    for name, tensor in cpp.named_buffers():
        module._buffers[name] = tensor
    for name, child in cpp.named_children():
        nn.Module.__setattr__(module, name, mirror(child, tree, classes, leaf_classes))
    module._finish()
    return module


def wrap(cpp, root_class, classes: dict, leaf_classes: dict | None = None, configure=None, **attributes):
    """Mirrors a whole C++ model with ``root_class`` (a Model subclass) at the top. ``configure(root)``,
    when given, sets the plain attributes the Python forwards read, before the tree records them."""
    tree = _Tree(cpp)
    root = mirror(cpp, tree, {**classes, cpp.module_info()[0]: root_class}, leaf_classes)
    for key, value in attributes.items():
        object.__setattr__(root, key, value)
    if configure is not None:
        configure(root)
    tree.root = _pair(root, cpp)
    return root


def _set_by_path(root: nn.Module, path: str, module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _del_by_path(root: nn.Module, path: str) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    delattr(parent, name)


class Model(_Mirror):
    """Root of a torchtl model: pickling, deepcopy and torchvision twins.

    Subclasses set ``_builder = (module, function, kwargs)``, the builder call that recreates the
    architecture; pickling stores that call, the child replacements made since, and the state
    dict, so ``torch.save(model)``/``torch.load`` and ``copy.deepcopy`` rebuild the C++ modules.
    """

    _builder: tuple

    def __reduce_ex__(self, protocol):
        frozen = [name for name, p in self.named_parameters() if not p.requires_grad]
        edits = list(self._tree.edits) + self._tree.python_edits()
        # Hooks, changed options, train/eval flags and attributes users set, module by module.
        attributes = {name: {k: v for k, v in module.__dict__.items() if k not in _STRUCTURE}
                      for name, module in self.named_modules()}
        return (_rebuild_model, (self._builder, edits, self.state_dict(), frozen, attributes))

    def _replay_edits(self, target: nn.Module) -> None:
        """Applies this model's child replacements to ``target`` (a torchvision twin)."""
        import copy

        for kind, *args in list(self._tree.edits) + self._tree.python_edits():
            if kind == "set":
                path, module = args
                _set_by_path(target, path, copy.deepcopy(module))
            elif kind == "del":
                _del_by_path(target, *args)
            else:
                self._replay_special(target, kind, *args)

    def _replay_special(self, target, kind, *args):
        raise ValueError(f"unknown model edit {kind!r}")


# What a rebuilt model gets from its builder rather than from the pickled one.
_STRUCTURE = frozenset(("_parameters", "_buffers", "_modules", "_cpp_module", "_tree"))


def _rebuild_model(builder, edits, state, frozen, attributes):
    import importlib

    module_name, function, kwargs = builder
    model = getattr(importlib.import_module(module_name), function)(**kwargs)
    for kind, *args in edits:
        if kind == "set":
            _set_by_path(model, *args)
        elif kind == "del":
            _del_by_path(model, *args)
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
    for name, module in model.named_modules():
        module.__dict__.update(attributes.get(name, {}))
    return model
