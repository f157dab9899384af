import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: N workers share the cores, so each (and every process it starts) takes one
    # thread; more would spin on each other's barriers
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, hidden-32 Llama with the byte tokenizer: the embedded default, smaller."""
    from lightning_rlhf.tiny import init_tiny_model

    return str(
        init_tiny_model(tmp_path_factory.mktemp("models") / "tiny", hidden_size=32, num_layers=2)
    )


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
    from lightning_rlhf.tasks import write_task_data

    out = tmp_path_factory.mktemp("data") / "task"
    write_task_data(out, seed=7, scale=0.1)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from lightning_rlhf.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models' ops are too small for intra-op threads: on shared cores the threads' barriers
    can slow them tenfold. One thread for the module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
