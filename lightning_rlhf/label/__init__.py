"""The labeling app: people compare two responses per prompt, and the judgments become the
preference data the reward stage trains on (``python -m lightning_rlhf label --help``).

Storage (``db``, ``queue``) and agreement statistics (``stats``) need only the standard library;
the web app (``app``) needs the ``label`` extra: ``pip install "lightning-rlhf[label]"``.
"""
