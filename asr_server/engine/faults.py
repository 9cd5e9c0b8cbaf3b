"""What a failure in the decoding loop is: out of memory, a device fault, or a request's own.

Out of memory is traced to requests (the loop runs a pass again in halves);
a device fault (a CUDA error, a device-side assert) may leave the context
unusable for every later call, so it ends the worker (``DeviceFailed``) and
the process exits 70 for systemd to restart it; anything else fails the
requests it came from.
"""

from __future__ import annotations


def is_out_of_memory(error: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or the RuntimeError older torch and the CPU allocator raise."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


# What CUDA, cuBLAS and cuDNN put in the errors that stick to a context (torch raises them as
# RuntimeError, or as torch.AcceleratorError since 2.8).
_DEVICE_FAULTS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_",
                  "CUDNN_STATUS_", "cuDNN error")


def is_device_fault(error: BaseException) -> bool:
    """A device error that is not out of memory: after it the device may fail every later call."""
    if is_out_of_memory(error):
        return False
    return type(error).__name__ == "AcceleratorError" or any(mark in str(error) for mark in _DEVICE_FAULTS)


class DeviceFailed(RuntimeError):
    """The device failed in a way no request can be blamed for: the worker stops (module docstring)."""


def raise_if_device_fault(error: BaseException) -> None:
    if is_device_fault(error):
        raise DeviceFailed(f"the device failed ({type(error).__name__}): the worker stops") from error
