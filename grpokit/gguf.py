"""GGUF files as a model source: converted once into a plain Hugging Face folder, then cached.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=name)`, with the `gguf` package)
and dequantizes its weights to float, but the model it returns refuses `save_pretrained` ("quantized
with gguf and is not serializable"), and every load dequantizes again. So a GGUF file is converted
once: the dequantized weights go into a fresh model of the same architecture, built from the config
without the GGUF quantization marker, and that model, the tokenizer (with its chat template) and the
generation config are saved as an ordinary folder that anything (grpokit, transformers, vLLM) loads.

The weights are the file's quantized values made float: a 4-bit GGUF gives a 4-bit-rounded copy of
the original model, whose scores differ from the published bf16 weights'.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from grpokit.errors import GrpokitError

SOURCE_FILE = "grpokit_gguf_source.json"  # written into every converted folder: where it came from
INSTALL_HINT = "pip install gguf  (or pip install 'grpokit[gguf]')"


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gguf")


def cache_root() -> Path:
    """Where converted folders are kept: $GRPOKIT_CACHE, else ~/.cache/grpokit."""
    return Path(os.environ.get("GRPOKIT_CACHE") or Path.home() / ".cache" / "grpokit") / "gguf"


def _fingerprint(path: Path) -> dict:
    """Identifies one version of a file without reading all of it (GGUF files run to many GB)."""
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def resolve_model_source(path: str) -> str:
    """A model folder for `path`: the path itself, or for a .gguf file its cached conversion."""
    if not is_gguf(path):
        return path
    gguf_file = Path(path).expanduser()
    if not gguf_file.is_file():
        raise GrpokitError(f"GGUF file '{path}' does not exist (looked in {Path.cwd()}).")
    fingerprint = _fingerprint(gguf_file)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / f"{gguf_file.stem}-{key}"
    if not (folder / SOURCE_FILE).is_file():
        convert_gguf(gguf_file, folder)
    return str(folder)


def gguf_architecture(gguf_file: Path) -> str:
    """`general.architecture` from the file's metadata (e.g. "llama"); names what cannot be converted."""
    gguf = _import_gguf()
    try:
        field = gguf.GGUFReader(str(gguf_file)).get_field("general.architecture")
    except (ValueError, OSError) as e:  # not a GGUF file, or a truncated one
        raise GrpokitError(f"'{gguf_file}' is not a readable GGUF file: {e}") from None
    if field is None:
        raise GrpokitError(f"'{gguf_file}' has no general.architecture in its metadata; is it a model file?")
    return str(field.contents())


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert a GGUF model file into a Hugging Face folder (float32 safetensors, tokenizer, chat
    template, generation config). Written into a temporary folder beside `out_dir` and renamed into
    place, so an interrupted conversion never leaves a folder that looks complete."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    gguf_file, out = Path(gguf_path).expanduser(), Path(out_dir)
    if not gguf_file.is_file():
        raise GrpokitError(f"GGUF file '{gguf_path}' does not exist (looked in {Path.cwd()}).")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GrpokitError(f"'{out}' already exists and is not empty; choose another folder or remove it.")
    architecture = gguf_architecture(gguf_file)
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise GrpokitError(f"'{gguf_file}' holds a '{architecture}' model, which transformers cannot read from "
                           f"GGUF; supported architectures: {supported}.")
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise GrpokitError(f"could not read the {architecture} model in '{gguf_file}': {e}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the marker that makes save_pretrained refuse; the weights are float now
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are not separate state-dict entries; anything else missing is a real gap.
    missing = [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise GrpokitError(f"converting '{gguf_file}': weights did not match the {architecture} architecture "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]}).")
    plain.generation_config = loaded.generation_config
    del loaded

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the converted folder is an ordinary one
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps({**_fingerprint(gguf_file), "architecture": architecture},
                                                      indent=2) + "\n")
        if out.exists():
            if overwrite or not any(out.iterdir()):
                shutil.rmtree(out)
        try:
            staging.rename(out)
        except OSError:
            if not (out / SOURCE_FILE).is_file():  # another process finished the same conversion first: keep it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise GrpokitError(f"reading a .gguf model needs the gguf package: {INSTALL_HINT}.") from None
    return gguf
