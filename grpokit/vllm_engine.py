"""Sampling with vLLM (`sampling.engine: vllm`, `pip install 'grpokit[vllm]'`, CUDA GPUs).

The trainer keeps its Hugging Face model for the update; vLLM only draws the completions. Two modes:
- colocate: a vLLM `LLM` inside each training process, sharing its GPU (`vllm.gpu_memory_utilization`).
  With several processes each runs its own engine on its share of the prompts
  (`distributed_executor_backend="external_launcher"`, the launcher's environment).
- server: a separate `vllm serve` process (its own GPUs), reached through TRL's `VLLMClient`:
  HTTP for generation, an NCCL group for the weights.

After every update the policy's weights are pushed into vLLM before it samples again (`sync`), so
vLLM samples from the current policy. Its log-probs still differ from the trainer's (other kernels
and precision), so the trainer recomputes the log-probs the ratio uses, and the update corrects for
the sampler's distribution with truncated importance weights (`losses.sampler_importance_weights`,
`vllm.importance_correction`).

Everything that touches vLLM's objects is in this file; `tests/test_vllm.py` drives it with a
stand-in `vllm` package on CPU, and runs the real one where a GPU and vLLM are present.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Iterator

import torch

from grpokit.batching import encode_prompts, pad_id
from grpokit.errors import GrpokitError
from grpokit.sampler import Rollout, Sampler, finish_rollout, stop_token_ids


def inference_weights(model, backend=None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the policy as a plain Hugging Face checkpoint would name them, which is
    what vLLM's `load_weights` reads. Every process must iterate it, in the same order:
    - FSDP shards are gathered one tensor at a time (`full_tensor`, a collective);
    - LoRA adapters are added to their base weights out of place, in float32. Merging into the module
      and unmerging again would round the frozen base in bfloat16 a little at every push, and the
      base is the KL reference.
    `backend` (a `grpokit.parallel.Backend`) gathers weights it splits otherwise (DeepSpeed ZeRO-3)."""
    if backend is not None:
        with backend.exported(model) as whole:
            yield from inference_weights(whole)
        return
    deltas = _lora_deltas(model)
    for name, tensor in model.state_dict().items():
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        if deltas is not None:
            if "lora_" in name or ".original_module." in name:
                continue  # the adapters are folded into the base weights below
            if name in deltas:
                tensor = (tensor.float() + deltas[name]).to(tensor.dtype)
            name = (name.removeprefix("base_model.model.").replace(".base_layer.", ".")
                    .replace(".modules_to_save.default.", "."))
        yield name, tensor.detach()


def _lora_deltas(model) -> dict[str, torch.Tensor] | None:
    """{state-dict name of a base weight: its active adapters' delta (float32)}; None for a model without peft."""
    if not hasattr(model, "peft_config"):
        return None
    from peft.tuners.lora import LoraLayer

    deltas = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                continue
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    key = f"{name}.base_layer.weight"
                    delta = module.get_delta_weight(adapter).float()
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    return deltas


def _sampled_logprobs(token_ids: list[int], logprobs) -> list[float]:
    """The sampled tokens' log-probs from vLLM's per-position entries: dicts {token id: Logprob}
    (the offline API) or lists / floats (the server client). Missing ones are NaN (unknown)."""
    out = []
    for position, token in enumerate(token_ids):
        entry = logprobs[position] if logprobs is not None and position < len(logprobs) else None
        if isinstance(entry, dict):
            entry = entry.get(token)
            entry = getattr(entry, "logprob", entry)
        elif isinstance(entry, (list, tuple)):
            entry = entry[0] if entry else None
        out.append(math.nan if entry is None else float(entry))
    return out


class VLLMSampler(Sampler):
    """Draws G completions per prompt with vLLM and keeps vLLM's weights equal to the policy's
    (pushed before the first sampling after each update)."""

    external = True

    def __init__(self, config, model_path: str, backend, seed: int, *, model, tokenizer):
        self.config, self.backend, self.world = config, backend, backend.world
        self.model, self.tokenizer = model, tokenizer
        self.mode = config.vllm.mode
        self.synced = False  # vLLM starts from the checkpoint on disk, which need not be the policy (warm-up, resume)
        self.sync_seconds = 0.0
        try:
            if self.mode == "colocate":
                self._start_colocated(model_path, seed)
            else:
                self._connect(config.vllm)
        except ImportError as e:
            raise GrpokitError(f"sampling.engine: vllm needs vLLM ({e}). Install it on a CUDA machine with "
                               "`pip install 'grpokit[vllm]'`, or use sampling.engine: grpokit.") from None

    # ------------------------------------------------------------------ starting
    def _start_colocated(self, model_path: str, seed: int) -> None:
        import vllm

        v, c = self.config.vllm, self.config
        kwargs = {"max_model_len": v.max_model_len} if v.max_model_len else {}
        # The engine runs inside this process (also with one process: otherwise vLLM runs it in a
        # subprocess, and pushing weights would mean pickling the model across). It joins the
        # launcher's environment; a process started without one gets a world of one.
        for key, value in (("RANK", self.world.rank), ("LOCAL_RANK", self.world.state.local_process_index),
                           ("WORLD_SIZE", self.world.size), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", _free_port())):
            os.environ.setdefault(key, str(value))
        self.llm = vllm.LLM(
            model=model_path, tokenizer=model_path,
            dtype="auto" if c.model.dtype == "float32" else c.model.dtype,
            gpu_memory_utilization=v.gpu_memory_utilization, enable_sleep_mode=v.enable_sleep_mode,
            seed=seed + self.world.rank,  # each process draws its own samples
            enable_prefix_caching=True,  # a group's G completions share the prompt's cache
            logprobs_mode="processed_logprobs",  # after temperature: the distribution tokens are drawn from
            distributed_executor_backend="external_launcher",
            **kwargs)
        self.SamplingParams = vllm.SamplingParams
        self.asleep = False
        self._sleep()

    def _sleep(self) -> None:
        """With vllm.enable_sleep_mode: give the GPU memory back to the trainer (weights to the CPU,
        KV cache dropped) until vLLM is needed again."""
        if self.config.vllm.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()  # weights and KV cache
            self.asleep = False

    def _connect(self, v) -> None:
        try:
            from trl.generation.vllm_client import VLLMClient
        except ImportError:
            from trl.extras.vllm_client import VLLMClient
        self.client = VLLMClient(base_url=v.server_url, connection_timeout=v.server_timeout)
        if self.world.is_main:  # one process pushes weights (every process holds the same ones)
            self.client.init_communicator(device=torch.cuda.current_device())

    # ------------------------------------------------------------------ weights
    def sync(self, model) -> None:
        """Push the policy's weights into vLLM; every process calls it (a collective under FSDP)."""
        started = time.perf_counter()
        if self.mode == "colocate":
            self._wake()  # stays awake: sampling follows
            self._colocated_model_call(lambda m: m.load_weights(inference_weights(model, self.backend)))
            self.llm.reset_prefix_cache()  # cached prompts were computed with the old weights
        else:
            weights = inference_weights(model, self.backend)  # iterated on every process: gathering is a collective
            if self.world.is_main:
                # one update for all tensors where the client groups them (TRL >= 1.x), else one per tensor
                batch = getattr(self.client, "weight_update", contextlib.nullcontext)
                with batch():
                    for name, tensor in weights:
                        self.client.update_named_param(name, tensor)
                self.client.reset_prefix_cache()
            else:
                for _ in weights:
                    pass
            self.world.barrier()
        self.synced = True
        self.sync_seconds += time.perf_counter() - started

    def _colocated_model_call(self, fn) -> None:
        """fn(vLLM's torch model). In-process engines expose it directly (what TRL uses); otherwise
        through vLLM's apply_model."""
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        for path in (("model_runner", "model"), ("worker", "model_runner", "model")):
            target = worker
            for attribute in path:
                target = getattr(target, attribute, None)
            if target is not None:
                fn(target)
                return
        self.llm.apply_model(fn)

    def after_update(self) -> None:
        """The policy changed (an optimiser step): sync before the next sampling."""
        self.synced = False

    # ------------------------------------------------------------------ sampling
    def sample(self, prompts: list[str], group_size: int, rows: list[dict] | None = None, *,
               max_new_tokens: int | None = None, temperature: float | None = None) -> Rollout:
        """sampling.max_new_tokens and sampling.temperature unless given."""
        s, model, tokenizer = self.config.sampling, self.model, self.tokenizer
        max_new_tokens = s.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = s.temperature if temperature is None else temperature
        stop_ids = stop_token_ids(tokenizer, model)
        if not self.synced:
            self.sync(model)
        prompt_ids_NP, prompt_mask_NP = encode_prompts(tokenizer, prompts)
        token_lists = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids_NP, prompt_mask_NP)]
        if self.mode == "colocate":
            completions = self._generate_colocated(token_lists, group_size, max_new_tokens, temperature, stop_ids,
                                                   tokenizer.eos_token_id)
        else:
            completions = self._generate_server(token_lists, group_size, max_new_tokens, temperature, stop_ids)
        if len(completions) != len(prompts) * group_size:
            raise GrpokitError(f"vLLM returned {len(completions)} completions for {len(prompts)} prompts x "
                               f"{group_size}; expected one per sample.")
        pad = pad_id(tokenizer)
        width = max(1, max(len(ids) for ids, _ in completions))
        completion_ids_BC = torch.full((len(completions), width), pad, dtype=torch.long)
        logprobs_BC = torch.zeros((len(completions), width))
        for i, (ids, logprobs) in enumerate(completions):
            ids, logprobs = ids[:max_new_tokens], logprobs[:max_new_tokens]
            completion_ids_BC[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs_BC[i, : len(ids)] = torch.tensor(logprobs, dtype=torch.float32)
        return finish_rollout(tokenizer, prompt_ids_NP.repeat_interleave(group_size, dim=0),
                              prompt_mask_NP.repeat_interleave(group_size, dim=0), completion_ids_BC, logprobs_BC,
                              stop_ids, group_size, external_sampler=True)

    def continue_ids(self, contexts: list[list[int]], *, max_new_tokens: int,
                     stop_sequences: list[list[int]] | None = None, temperature: float | None = None
                     ) -> list[tuple[list[int], list[float]]]:
        """One continuation per token context (a multi-turn conversation so far), drawn by vLLM; the
        caller cuts each at its turn's end (`grpokit.multiturn`), so stop strings need no vLLM support."""
        stop_ids = stop_token_ids(self.tokenizer, self.model)
        if not self.synced:
            self.sync(self.model)
        temperature = self.config.sampling.temperature if temperature is None else temperature
        if self.mode == "colocate":
            return self._generate_colocated(contexts, 1, max_new_tokens, temperature, stop_ids,
                                            self.tokenizer.eos_token_id)
        return self._generate_server(contexts, 1, max_new_tokens, temperature, stop_ids)

    def _generate_colocated(self, token_lists, group_size, max_new_tokens, temperature, stop_ids, eos_id):
        params = self.SamplingParams(n=group_size, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens,
                                     stop_token_ids=stop_ids, logprobs=0, detokenize=False)
        self._wake()  # also after a sleep between two samplings with no update (dynamic sampling's rounds)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_lists], sampling_params=params,
                                    use_tqdm=False)
        self._sleep()
        completions = []
        for request in outputs:  # in the order of the prompts
            for output in request.outputs:
                ids = list(output.token_ids)
                logprobs = _sampled_logprobs(ids, output.logprobs)
                ids, logprobs = _with_stop_token(ids, logprobs, getattr(output, "finish_reason", None),
                                                 getattr(output, "stop_reason", None), stop_ids, eos_id)
                completions.append((ids, logprobs))
        return completions

    def _generate_server(self, token_lists, group_size, max_new_tokens, temperature, stop_ids):
        out = self.client.generate(prompts=token_lists, n=group_size, temperature=temperature, top_p=1.0,
                                   max_tokens=max_new_tokens, logprobs=0,
                                   generation_kwargs={"stop_token_ids": stop_ids})
        logprobs = out.get("logprobs") or [None] * len(out["completion_ids"])
        return [(list(ids), _sampled_logprobs(list(ids), lps)) for ids, lps in zip(out["completion_ids"], logprobs)]

    def close(self) -> None:
        if self.mode == "server" and self.world.is_main:
            self.client.close_communicator()


def _with_stop_token(ids: list[int], logprobs: list[float], finish_reason, stop_reason, stop_ids: list[int],
                     eos_id: int | None):
    """A completion that vLLM ended on a stop token must end with that token here: the update trains
    the model to stop. Should a vLLM version leave it out of token_ids, it is put back, with an
    unknown sampler log-prob (its importance weight factor is then 1)."""
    if finish_reason == "stop" and isinstance(stop_reason, int) and stop_reason in stop_ids \
            and (not ids or ids[-1] != stop_reason):
        return ids + [stop_reason], logprobs + [math.nan]
    if finish_reason == "stop" and stop_reason is None and eos_id is not None and (not ids or ids[-1] not in stop_ids):
        return ids + [eos_id], logprobs + [math.nan]  # ended by EOS, which was left out
    return ids, logprobs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
