"""Loading a causal LM and its tokenizer, with errors a user can act on."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from grpokit.config import ModelConfig
from grpokit.errors import GrpokitError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    from grpokit.parallel import world

    if name in ("auto", "cuda") and world().size > 1:
        return world().device  # one device per process: cuda:LOCAL_RANK (or the CPU)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GrpokitError(f"model.device '{name}' is not a device; expected auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrpokitError(f"model.device is '{name}' but no CUDA device is available here; use auto or cpu.")
    return device


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = model_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise GrpokitError(f"could not load a tokenizer from '{path}': {e}") from None
    if tokenizer.pad_token_id is None:
        # Padding is masked by position, so reusing EOS as pad never hides a real EOS.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, path: str | None = None, trainable: bool = False):
    """A model on the configured device. A model that will be trained keeps float32 parameters
    (bf16 parameters would round away most AdamW updates: bf16(0.02) + 1e-6 == 0.02) and computes
    in `cfg.dtype` through `autocast`; a frozen one (eval, reference) is stored in `cfg.dtype`."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = model_folder(path or cfg.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32 if trainable else DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
        )
    except SafetensorError as e:  # a truncated or overwritten weights file: its header or data does not parse
        raise GrpokitError(f"could not load a causal LM from '{path}': {_weights_files(path)} is damaged "
                           f"(truncated or corrupted: {e}). Restore the file, or point model.path at an intact "
                           "copy.") from None
    except (OSError, ValueError) as e:
        raise GrpokitError(f"could not load a causal LM from '{path}': {e}") from None
    return model.to(resolve_device(cfg.device))


def _weights_files(path: str) -> str:
    """The safetensors file(s) of a model folder, for a message."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    return ", ".join(str(f) for f in files) or f"a .safetensors file of {path}"


def apply_lora(model, cfg, seed: int = 0):
    """Wrap `model` with fresh LoRA adapters (peft); only the adapters require gradients. Their random
    initialisation comes from `seed` alone (the global stream is left as it was), so every process of a
    multi-process run starts from the same adapters."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise GrpokitError("lora.enabled needs the peft package: pip install 'grpokit[lora]'.") from None
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else \
        [name.strip() for name in cfg.target_modules.split(",") if name.strip()]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                    target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as e:  # e.g. target modules not found in the model
        raise GrpokitError(f"could not add LoRA adapters (lora.target_modules={cfg.target_modules!r}): {e}") from None


def load_lora(base_model, adapter_dir: str):
    """Trainable adapters saved by a checkpoint, on top of their base model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=True)


class AdapterDisabledReference:
    """The KL reference of a LoRA run: the policy itself with its adapters switched off (the base
    model), in eval mode and without gradients. It holds no weights of its own, so
    `trained_state_mb` counts none. Anything that calls a model (`token_logprobs`) can call it."""

    def __init__(self, peft_model):
        self.model = peft_model

    @property
    def config(self):
        return self.model.config

    def get_base_model(self):
        return self.model.get_base_model()

    def parameters(self):
        return iter(())

    def __call__(self, *args, **kwargs):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)


def autocast(cfg: ModelConfig, device: torch.device):
    """Mixed precision for forward passes when model.dtype is not float32 (parameters stay float32)."""
    if cfg.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[cfg.dtype])


def model_folder(path: str) -> str:
    """What `from_pretrained` should read for a model path: a folder or hub name as given, or for a
    .gguf file its converted folder (converted on first use, then cached; see grpokit.gguf)."""
    from grpokit.gguf import resolve_model_source

    _check_exists(path)
    return resolve_model_source(path)


def _check_exists(path: str) -> None:
    """A path-looking name that does not exist is a typo, not a hub name: say so before the hub is tried."""
    if not path:
        raise GrpokitError("no model given: set model.path (a local model folder, a .gguf file or a hub name).")
    # Hub names are "name" or "org/name"; anything else (./x, /x, a/b/c) can only be local.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise GrpokitError(f"model path '{path}' does not exist (looked in {Path.cwd()}).")
