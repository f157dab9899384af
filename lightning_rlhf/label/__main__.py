"""``python -m lightning_rlhf.label``: the same as ``python -m lightning_rlhf label``, without
importing Lightning first (the server starts in a fraction of the time)."""

from lightning_rlhf.label.cli import main

main()
