"""How torchtl's models run, and the exact mode that runs them as torchvision does.

By default (the fast path) a model's C++ forward takes a 4-D batch in channels_last, the layout
oneDNN's CPU convolutions and cuDNN's tensor cores run fastest in, and hands its outputs back in
the caller's layout; in eval mode without autograd each Conv2d + BatchNorm2d pair runs as one
convolution whose weights are folded once and refolded only when a weight or buffer changes.
``torchtl.engine.fit`` also keeps the convolution weights in channels_last for the length of the
run and restores their layout afterwards. Results differ from torchvision's default execution
by floating-point rounding only: about 1e-5 relative in fp32 (``tests/test_fast_path.py``).

NaN and infinity come out as in torchvision: oneDNN's convolution with a fused ReLU maps NaN to 0,
so a CPU model's entry sums its input once (about 0.1-0.6% of a ResNet forward) and runs a batch
whose sum is not finite in exact mode (``tests/test_nonfinite.py``).

Exact mode runs torchvision's default execution (contiguous fp32, batch norm unfolded), bit for
bit. Like ``torch.autocast`` it is per thread; the C++ loops run on the calling thread.

    with torchtl.exact_mode():
        assert torch.equal(model(x), torchvision_twin(x))

bf16 on the CPU: ``with torch.autocast("cpu", dtype=torch.bfloat16): model(x)`` reaches the C++
forward (autocast state is per thread, and the forward runs on the calling thread), and
``torchtl.engine.fit(..., amp="bf16")`` autocasts inside the C++ loops. It pays only on CPUs with
native bf16 (AVX-512 BF16 or AMX): ``cpu_supports_bf16()``; elsewhere the engine refuses it.
"""
import contextlib

from torchtl import _C

__all__ = ["exact_mode", "set_exact_mode", "is_exact_mode", "cpu_supports_bf16"]


def is_exact_mode() -> bool:
    """Whether models called from this thread run in exact mode."""
    return _C.exact_mode()


def set_exact_mode(enabled: bool) -> None:
    """Turns exact mode on or off for this thread (``exact_mode()`` scopes it)."""
    _C.set_exact_mode(bool(enabled))


@contextlib.contextmanager
def exact_mode(enabled: bool = True):
    """Runs the enclosed model calls and C++ loops in exact mode (or, with False, on the fast path)."""
    previous = _C.exact_mode()
    _C.set_exact_mode(bool(enabled))
    try:
        yield
    finally:
        _C.set_exact_mode(previous)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    return _C.cpu_supports_bf16()
