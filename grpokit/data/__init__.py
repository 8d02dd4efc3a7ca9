"""Load prompts with their ground-truth answers, validate them, and render prompts as model text.

`load_examples(source)` reads a file, a folder or a hub dataset (`sources.py`), checks every
row and turns it into an `Example` (`rows.py`); `render_prompt` makes the text the model sees
(`prompts.py`). Every problem in the data is collected so one `GrpokitError` lists them all.
"""

from grpokit.data.prompts import render_prompt
from grpokit.data.rows import DATASET_FORMATS, ROLES, Example, check_pairs, load_examples
from grpokit.data.sources import FILE_SUFFIXES
from grpokit.jsonl import read_jsonl  # importable from here as before the reader moved

__all__ = [
    "DATASET_FORMATS",
    "FILE_SUFFIXES",
    "ROLES",
    "Example",
    "check_pairs",
    "load_examples",
    "read_jsonl",
    "render_prompt",
]
