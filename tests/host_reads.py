"""A dispatch mode that counts the reads of device values on the host."""

from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts the reads of a tensor's value on the host: ``.item()``, ``bool(tensor)``, and
    ``nonzero`` (its result's size). On a GPU each one waits for every queued kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.__name__.startswith(("_local_scalar_dense", "nonzero"))
        return func(*args, **(kwargs or {}))
