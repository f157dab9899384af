from lightning_rlhf.callbacks.export import HFExport
from lightning_rlhf.callbacks.progress import RunProgressBar, ValidateAtStart

__all__ = ["HFExport", "RunProgressBar", "ValidateAtStart"]
