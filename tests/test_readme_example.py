"""The README's Python example runs as written, and `grpokit`'s public names are what it imports.

The example is the first ```python block after the README's "## Python" heading. It runs the demo's
training; here the tiny model is the "test" size and the run is two steps long, so the test takes
seconds: `ensure_tiny` and `load_config` are wrapped to point at the session's tiny model and to
append overrides that shrink the run. Everything else is the README's code, executed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readme_python_example() -> str:
    text = README.read_text(encoding="utf-8")
    heading = re.search(r"^## Python\b.*$", text, re.M)
    assert heading, "README.md has no '## Python' heading"
    block = re.search(r"^```python\n(.*?)^```", text[heading.end():], re.M | re.S)
    assert block, "no ```python block after README.md's '## Python' heading"
    return block.group(1)


def test_readme_python_example_runs(tiny_home, tmp_path, monkeypatch, capsys):
    import grpokit

    code = readme_python_example()
    assert "from grpokit import" in code and "train(" in code

    real_load_config = grpokit.load_config
    out = tmp_path / "run"
    fast = [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
            "train.steps=2", "warmup.steps=2", "warmup.batch_size=4", "sampling.prompts_per_step=2",
            "sampling.group_size=4", "sampling.max_new_tokens=12", "optim.warmup_steps=0", "eval.every=0",
            "data.max_eval_examples=8", "train.progress=false", f"train.out_dir={out}"]

    def load_config(path=None, overrides=()):
        # the README's relative config path is the repository's; the test runs in tmp_path
        return real_load_config(REPO / path if path is not None else None, [*overrides, *fast])

    monkeypatch.setattr(grpokit, "ensure_tiny", lambda home, *args, **kwargs: tiny_home)
    monkeypatch.setattr(grpokit, "load_config", load_config)
    monkeypatch.chdir(tmp_path)

    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)

    summary = namespace["summary"]
    assert summary["steps"] == 2 and summary["run_dir"] == str(out)
    assert (out / "summary.json").is_file() and (out / "final" / "config.json").is_file()
    for key in ("eval_initial", "eval_before", "eval_after"):
        assert summary[key]["n"] == 8 and 0.0 <= summary[key]["accuracy"] <= 1.0
    printed = capsys.readouterr().out
    assert f"{summary['eval_after']['accuracy']:.1%}" in printed, printed


def test_import_grpokit_is_light():
    code = ("import sys, grpokit; heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy; print(grpokit.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.1.0"


def test_public_names_resolve_to_the_library_functions():
    import grpokit
    import grpokit.compare  # importing a submodule of the same name must not replace the function
    import grpokit.doctor
    from grpokit import doctor, explain

    assert grpokit.__all__[0] == "__version__"
    for name in grpokit.__all__[1:]:
        assert callable(getattr(grpokit, name)), name
    assert doctor.__name__ == "run_doctor" and explain.__name__ == "explain"
    assert grpokit.compare.__module__ == "grpokit.compare" and callable(grpokit.compare)
    assert grpokit.score_file.__name__ == "score_file"
    from grpokit.config import Config
    from grpokit.trainer import train

    assert grpokit.train is train and grpokit.Config is Config
