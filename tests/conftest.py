import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHARED = Path(__file__).resolve().parents[2] / "shared"  # developer and CI machines only


@pytest.fixture(scope="session", autouse=True)
def studies_home(tmp_path_factory):
    """Every test writes study stores and caches under one temporary folder, never into the repo."""
    home = tmp_path_factory.mktemp("studies")
    os.environ["TRANSFER_SEARCH_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    import keras

    keras.backend.clear_session()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
