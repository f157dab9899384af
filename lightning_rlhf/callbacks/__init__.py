from lightning_rlhf.callbacks.export import HFExport

__all__ = ["HFExport"]
