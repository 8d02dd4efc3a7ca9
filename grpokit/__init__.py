"""grpokit: post-train language models by sampling and verifying.

Every command is a library function, importable from here:

    from grpokit import ensure_tiny, load_config, train

    paths = ensure_tiny(".grpokit/tiny")
    config = load_config("grpokit/tiny/demo.yaml", [f"model.path={paths['model']}", "train.steps=50"])
    summary = train(config)

The names are resolved on first use (PEP 562), so `import grpokit` stays light: it imports neither
torch nor transformers. `compare`, `explain` and `doctor` are also the names of submodules; on the
package they are always the functions (import the modules' other contents with
`from grpokit.doctor import format_report`, which is unaffected).
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "train": ("grpokit.trainer", "train"),  # train(config, out_dir=None) -> summary dict
    "Config": ("grpokit.config", "Config"),
    "load_config": ("grpokit.config", "load_config"),  # load_config(path=None, overrides=(), base=None)
    "evaluate": ("grpokit.evaluation", "evaluate"),  # evaluate(model, tokenizer, prompts, answers, components, ...)
    "compare": ("grpokit.compare", "compare"),  # compare(config_path, overrides, out_dir, methods=...)
    "explain": ("grpokit.explain", "explain"),  # explain(lr=1.0, ...) -> rows; grpokit.explain.run formats them
    "doctor": ("grpokit.doctor", "run_doctor"),  # run_doctor(config, num_groups=4, ...) -> Report
    # score_file(path, components, *, completion_field, answer_field, prompt_field="prompt")
    "score_file": ("grpokit.score_command", "score_file"),
    "build_tiny": ("grpokit.tiny", "build_tiny"),  # build_tiny(out_dir, size="demo", seed=0)
    "ensure_tiny": ("grpokit.tiny", "ensure_tiny"),  # ensure_tiny(home, size="demo", ...) -> paths
}

__all__ = ["__version__", *_EXPORTS]

# submodules whose names are also exported functions
_SHADOWED = frozenset(name for name, (module, _) in _EXPORTS.items() if module == f"grpokit.{name}")


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'grpokit' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Importing a submodule binds it as an attribute of its package. For grpokit.compare,
    grpokit.explain and grpokit.doctor that would replace the exported function with the module,
    depending on what was imported first; this keeps `grpokit.<name>` the function."""

    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
