"""Crash-safe checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint folder `checkpoints/step_N/` holds
- the model (and tokenizer) as a Hugging Face folder, safetensors: `from_pretrained` loads it;
- `optimizer.pt` (AdamW state, tensors only: read back with `weights_only=True`);
- `rng.pt` (torch CPU/CUDA generator states) and `state.json` (step, scheduler, python/numpy RNG
  states, positions in metrics.jsonl / rollouts.jsonl, the summary so far);
- `manifest.json`: size and sha256 of every file, written last.
It is written into a temporary folder, flushed, checksummed and renamed into place; the
`checkpoints/latest` pointer is replaced last. A kill at any moment leaves either the old or the
new checkpoint complete, never a half-written one that `latest` points to; what a kill leaves
unfinished (`.tmp_step_N`, `.latest.tmp`, `.deepspeed_step_N`) is never read and is removed by the
next run (`discard_incomplete`). A write that fails (a full disk) removes its temporary folder and
raises a `GrpokitError` that says what failed, how much space is free and which checkpoint is kept.

The same manifest (`write_manifest`, `verify_folder`) checksums `reference/` and `final/`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from grpokit.errors import GrpokitError

MANIFEST = "manifest.json"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> tuple[dict, dict]:
    """(JSON-able python/numpy states, tensor states) of every RNG the run uses."""
    np_state = np.random.get_state()
    json_part = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return json_part, tensors


def set_rng_state(json_part: dict, tensors: dict) -> None:
    version, internal, gauss = json_part["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = json_part["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(root: Path, step: int, *, model, tokenizer, optimizer_state: dict, state: dict, keep: int,
                    save_extra=None, model_state: dict | None = None) -> Path:
    """Atomically write checkpoints/step_{step} and point `latest` at it; keep the newest `keep`.
    `save_extra(folder)` writes a method's further state (PPO's value model) into the same folder;
    `model_state` replaces the model's own state dict (a sharded model's, gathered whole).
    A write that fails (full disk, I/O error) removes the temporary folder and raises GrpokitError."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=model_state)  # None: the model's own
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        if save_extra is not None:
            save_extra(tmp)
        rng_json, rng_tensors = rng_state()
        torch.save(rng_tensors, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "rng": rng_json}), encoding="utf-8")
        write_manifest(tmp)
    except Exception as e:
        failure = write_failure(e, tmp, root, what=f"checkpoint {final.name}")
        if failure is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the earlier checkpoints are untouched
        raise failure from None
    shutil.rmtree(final, ignore_errors=True)  # a stale folder of the same step from an earlier attempt
    os.replace(tmp, final)
    _fsync_dir(root)
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name, encoding="utf-8")
    _fsync_file(pointer)
    os.replace(pointer, root / "latest")
    _fsync_dir(root)
    for old in sorted(complete_steps(root))[:-keep] if keep > 0 else []:
        shutil.rmtree(root / f"step_{old}", ignore_errors=True)
    return final


def write_manifest(folder: Path) -> None:
    """Flush every file of `folder` and list its size and sha256 in `folder/manifest.json` (written last)."""
    manifest = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST):
        _fsync_file(path)
        manifest[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync_file(folder / MANIFEST)
    _fsync_dir(folder)


# Incomplete writes a kill leaves behind: never read, removed by the next run.
INCOMPLETE = (".tmp_step_*", ".latest.tmp", ".deepspeed_step_*")


def discard_incomplete(root: Path) -> list[str]:
    """Remove the unfinished checkpoint writes in `root`; returns their names."""
    removed = []
    for pattern in INCOMPLETE:
        for path in sorted(root.glob(pattern)) if root.is_dir() else []:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


# torch.save reports a failed write as a RuntimeError without an errno (a full disk shows as
# "basic_ios::clear: iostream error" or "enforce fail at inline_container.cc"), safetensors as a
# SafetensorError naming the OS error; these phrases are how they are told from other errors.
_WRITE_FAILURE_PHRASES = ("iostream error", "inline_container", "PytorchStreamWriter", "file write failed",
                          "No space left", "StorageFull", "Disk quota", "IoError")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)


def write_failure(error: BaseException, path: Path, root: Path, what: str, any_os_error: bool = True
                  ) -> GrpokitError | None:
    """The GrpokitError for a write into `path` that failed with `error`, or None if `error` is not a
    failed write. `root` is the checkpoints folder: the message says what is kept there.
    `any_os_error`: count every OSError (while writing a checkpoint); otherwise only a full disk, a
    quota, a read-only or failing disk."""
    if isinstance(error, OSError):
        if not (any_os_error or error.errno in _DISK_ERRNOS):
            return None
        reason = error.strerror or str(error)
        path = Path(error.filename) if error.filename else path
    elif isinstance(error, RuntimeError) or type(error).__name__ == "SafetensorError":
        if not any(phrase in str(error) for phrase in _WRITE_FAILURE_PHRASES):
            return None
        reason = "the write failed (" + str(error).strip().splitlines()[0][:200] + ")"
    else:
        return None
    try:
        free = shutil.disk_usage(root if root.exists() else root.parent).free
        space = f"{free / 2**20:.1f} MiB free on the disk that holds it"
        if free < 64 * 2**20:
            space += ", so the disk is (nearly) full"
    except OSError:
        space = "the free space could not be read"
    steps = sorted(complete_steps(root), reverse=True)
    kept = (f"Kept: {', '.join(f'{root.name}/step_{s}' for s in steps)}, intact: free some space, then continue "
            "from the newest with --resume (train.resume=true)." if steps else
            "No checkpoint was completed before it: free some space, then start the run again (the folder is "
            "reused) or use --resume, which starts from the beginning.")
    return GrpokitError(f"writing {what} failed at {path}: {reason}; {space}. {kept}")


def complete_steps(root: Path) -> list[int]:
    """Steps of the checkpoint folders renamed into place (`step_N`): finished writes, not yet verified."""
    steps = []
    if not root.is_dir():
        return steps
    for p in root.glob("step_*"):
        suffix = p.name.removeprefix("step_")
        if p.is_dir() and suffix.isdigit():
            steps.append(int(suffix))
    return steps


def verify_folder(path: Path) -> str | None:
    """None if `path` holds exactly the files its manifest lists, each with the listed size and sha256;
    otherwise what is wrong, in words, naming the file."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return f"{path} has no {MANIFEST} (the write did not finish)"
    expected_form = 'a JSON object {"<file>": {"bytes": <int>, "sha256": "<hex>"}, ...}'
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{manifest_path} is unreadable ({e}); expected {expected_form}"
    if not isinstance(manifest, dict) or not manifest:
        return f"{manifest_path} is not {expected_form}"
    for name, entry in manifest.items():
        if not (isinstance(entry, dict) and set(entry) == {"bytes", "sha256"} and isinstance(entry["bytes"], int)
                and isinstance(entry["sha256"], str)):
            return f"{manifest_path}: the entry of {name!r} is not {{\"bytes\": <int>, \"sha256\": \"<hex>\"}}"
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{manifest_path} lists {name!r}, which is outside {path}"
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p != manifest_path}
    unlisted = sorted(present - set(manifest))
    if unlisted:
        return f"{path / unlisted[0]} is not in {MANIFEST} (the folder was changed after it was written)"
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{file} has {file.stat().st_size} bytes, the manifest says {expected['bytes']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{file} does not match its checksum (corrupted)"
    return None


verify_checkpoint = verify_folder  # a checkpoint is one such folder


def check_reference(folder: Path) -> None:
    """Refuse (GrpokitError) a `reference/` folder that does not match its manifest. One written before
    grpokit checksummed it (no manifest) is used, with a warning."""
    if not folder.is_dir():
        raise GrpokitError(f"{folder} is missing: it holds the KL reference model of this run (the policy as the "
                           "method started), which cannot be rebuilt. Restore it from a backup, or start the run over "
                           "with --overwrite.")
    if not (folder / MANIFEST).is_file():
        print(f"grpokit: {folder} has no {MANIFEST} (written by an older grpokit): it cannot be verified.",
              file=sys.stderr)
        return
    problem = verify_folder(folder)
    if problem is not None:
        raise GrpokitError(f"the KL reference model of this run is damaged: {problem}. It cannot be rebuilt (it is the "
                           f"policy as the method started): restore {folder} from a backup, or start the run over "
                           "with --overwrite.")


def find_resumable(root: Path) -> Path | None:
    """The newest checkpoint that verifies, starting from `latest`; bad ones are reported and skipped."""
    if not root.is_dir():
        return None
    candidates = sorted(complete_steps(root), reverse=True)
    pointer = root / "latest"
    if pointer.is_file():
        named = pointer.read_text(encoding="utf-8").strip().removeprefix("step_")
        if named.isdigit() and int(named) in candidates:  # latest first, then older ones
            candidates.remove(int(named))
            candidates.insert(0, int(named))
    for step in candidates:
        path = root / f"step_{step}"
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        print(f"grpokit: refusing checkpoint {path}: {problem}; trying an older one.", file=sys.stderr)
    if candidates:
        raise GrpokitError(f"no checkpoint in {root} passes verification (see the messages above), so the run "
                           "cannot continue. Restore the checkpoints from a backup, or start the run over in this "
                           "folder with --overwrite (its checkpoints, logs and final model are deleted first), or in "
                           "another folder with --out.")
    return None


def write_run_checkpoint(root: Path, step: int, *, backend, model, tokenizer, optimizer, state: dict, keep: int,
                         save_extra) -> Path | None:
    """Every process calls it: the backend gathers what it splits (a collective), writes its own state
    (DeepSpeed's partitions, every process its part, moved in with the rest), and the main process
    writes the checkpoint; the others wait for it. Returns the folder on the main process."""
    model_state = backend.full_model_state(model)
    optimizer_state = backend.optimizer_state(model, optimizer)
    if backend.has_own_state:
        staging = root / f".deepspeed_step_{step}"
        if backend.world.is_main:  # also what a crash between writing and moving left behind
            for stale in root.glob(".deepspeed_step_*"):
                shutil.rmtree(stale, ignore_errors=True)
        backend.world.barrier()
        backend.save_state(model, staging)
        backend.world.barrier()

        def save_extra(folder: Path, method_extra=save_extra) -> None:
            method_extra(folder)
            shutil.move(str(staging), str(folder / "deepspeed"))
    path = None
    if backend.world.is_main:
        path = save_checkpoint(root, step, model=model, tokenizer=tokenizer, optimizer_state=optimizer_state,
                               state=state, keep=keep, save_extra=save_extra, model_state=model_state)
    backend.world.barrier()
    return path


def load_checkpoint(path: Path, model, optimizer, backend) -> dict:
    """Restore the backend's own state, optimizer and RNG states from `path` and return state.json
    (the model is loaded by the caller)."""
    saved_by_deepspeed = (path / "deepspeed").is_dir()
    if saved_by_deepspeed != backend.has_own_state:
        raise GrpokitError(
            f"{path} was written by a run {'with' if saved_by_deepspeed else 'without'} DeepSpeed; this run is "
            f"{'without' if saved_by_deepspeed else 'with'} it. Resume with the same launch settings (accelerate "
            "config) as the run that wrote it.")
    if backend.has_own_state:
        backend.load_state(model, path / "deepspeed")
    backend.load_optimizer_state(model, optimizer, lambda: torch.load(path / "optimizer.pt", weights_only=True),
                                 str(path))
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    set_rng_state(state["rng"], torch.load(path / "rng.pt", weights_only=True))
    return state
