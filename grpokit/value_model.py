"""The critic PPO needs: V(s_t) for every completion token, as a model of its own.

The value model is the policy checkpoint's transformer backbone (`AutoModel`, e.g. `LlamaModel`: no LM
head) plus a scalar head `nn.Linear(hidden_size, 1)`. It is a separate model on purpose: a second set of
weights, gradients and AdamW moments is exactly the memory GRPO claims to save, and keeping it separate
lets `parameter_bytes` report that cost rather than hide it in a shared trunk.

Alignment matches `grpokit.logprobs.completion_logprobs`: input_ids_BT is [left-padded prompt | completion],
and the logits at position t predict token t + 1, so completion token j is chosen from the state at
position prompt_len - 1 + j. Its value is read from the hidden state at that same position: V for token j
is the value of the state *before* token j is emitted, and depends only on the tokens before it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from grpokit.errors import GrpokitError
from grpokit.logprobs import position_ids_from_mask
from grpokit.modeling import resolve_device

HEAD_FILE = "value_head.safetensors"

# Head init: zero bias, weight ~ N(0, (HEAD_INIT_SCALE / sqrt(hidden_size))^2).
# - No learned head to start from: TRL's PPO copies the critic from the reward model, but our rewards are
#   verifiers, not models, so the critic is the policy's backbone and its head knows nothing yet.
# - Small, so initial values are ~0: the backbone's last hidden state is RMS-normalised (RMS ~ the final
#   norm's weights, ~1), so V = w.h has std ~ HEAD_INIT_SCALE = 0.01, negligible next to rewards in
#   [0, 1]. The first advantages are then ~ r - 0 (a plain REINFORCE signal) instead of r minus a random
#   baseline of size ~1, which the usual 1/sqrt(hidden + 1) std (lm-human-preferences) or nn.Linear's
#   default init would give.
# - Not all zeros: with w = 0 the gradient reaching the backbone, dL/dh = dL/dV * w, is exactly zero, so
#   the first critic step would train only the head. A small nonzero w lets the backbone learn from step
#   one; AdamW normalises gradient scale, so a small w does not mean small backbone updates.
# The init uses its own seeded generator: deterministic, and it leaves the global RNG stream (sampling)
# exactly as it would be without a critic.
HEAD_INIT_SCALE = 0.01


class ValueModel(nn.Module):
    """Backbone + scalar head. `parameters()` covers both, so one AdamW trains the whole critic."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_backbone(cls, policy: nn.Module, *, seed: int = 0) -> ValueModel:
        """A float32 copy of an in-memory policy's backbone (its current weights, e.g. after a warm-up) with a
        fresh small head, on the policy's device. The copy shares nothing with the policy."""
        backbone = getattr(policy, "base_model", policy)  # ForCausalLM -> its `model` (e.g. LlamaModel)
        if backbone is policy and hasattr(policy, "lm_head"):
            raise TypeError(f"cannot find the backbone of {type(policy).__name__} (no base_model_prefix)")
        backbone = copy.deepcopy(backbone).float().requires_grad_(True)
        device = next(backbone.parameters()).device
        return cls(backbone, _new_head(backbone, seed)).to(device).eval()

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device,
             trust_remote_code: bool = False) -> ValueModel:
        """A value model written by `save`: the backbone folder plus `value_head.safetensors` inside it."""
        folder = Path(path).expanduser()
        expected = f"a value model folder written by ValueModel.save (config.json, model weights and {HEAD_FILE})"
        if not folder.is_dir():
            raise GrpokitError(f"value model path '{path}' is not a folder; expected {expected}.")
        head_file = folder / HEAD_FILE
        if not head_file.is_file():
            raise GrpokitError(f"value model folder '{path}' has no {HEAD_FILE}; expected {expected}.")
        backbone = _load_backbone(str(folder), trust_remote_code, what="a value model backbone")
        hidden = backbone.config.get_text_config().hidden_size
        try:
            state = load_file(str(head_file))
        except (OSError, SafetensorError) as e:
            raise GrpokitError(f"could not read the value head '{head_file}': {e}") from None
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != {"weight": (1, hidden), "bias": (1,)}:
            raise GrpokitError(
                f"value head '{head_file}' holds {shapes}; expected weight (1, {hidden}) and bias (1,) "
                f"to match the backbone's hidden size {hidden}."
            )
        head = nn.Linear(hidden, 1, dtype=torch.float32)
        head.load_state_dict({k: v.float() for k, v in state.items()})
        return cls(backbone, head).to(_device(device)).eval()

    def save(self, path: str | Path) -> None:
        """Backbone via `save_pretrained` into `path`, head into `path/value_head.safetensors`."""
        folder = Path(path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(folder / HEAD_FILE), metadata={"format": "pt"})

    def forward(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Values of the completion tokens: (B, T) -> (B, T - prompt_len), float32.

        Column j is V at position prompt_len - 1 + j, the state from which completion token j is sampled
        (the position whose logits `completion_logprobs` uses for it). Padded completion columns get values
        too; the caller masks them.
        """
        T = input_ids_BT.shape[1]
        if not 1 <= prompt_len <= T:
            raise ValueError(f"prompt_len must be in [1, {T}] (the state before the first completion token "
                             f"is the last prompt position); got {prompt_len}")
        out = self.backbone(
            input_ids=input_ids_BT,
            attention_mask=attention_mask_BT,
            position_ids=position_ids_from_mask(attention_mask_BT),
            use_cache=False,
        )
        hidden_BCH = out.last_hidden_state[:, prompt_len - 1: T - 1]
        # The head runs in float32 even under autocast: a bf16 value keeps ~3 significant digits, too coarse
        # for a regression target in [0, 1]. It is one (H -> 1) projection, so this costs nothing.
        with torch.autocast(hidden_BCH.device.type, enabled=False):
            return self.head(hidden_BCH.float()).squeeze(-1)

    def values(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Same as calling the module (goes through `__call__`, so hooks and wrappers such as DDP apply)."""
        return self(input_ids_BT, attention_mask_BT, prompt_len)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the parameters themselves (no gradients, optimiser state or buffers)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _new_head(backbone: nn.Module, seed: int) -> nn.Linear:
    """Zero bias, weight ~ N(0, (HEAD_INIT_SCALE / sqrt(hidden))^2) from a generator of its own (see above)."""
    hidden = backbone.config.get_text_config().hidden_size
    head = nn.Linear(hidden, 1, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * (HEAD_INIT_SCALE / hidden**0.5))
        head.bias.zero_()
    return head


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _load_backbone(path: str, trust_remote_code: bool, what: str) -> nn.Module:
    """`AutoModel` weights in float32, refusing a load that would leave any backbone weight random.

    From a `...ForCausalLM` checkpoint transformers maps `model.*` onto the base model and drops the
    LM head (reported as unexpected: fine). A *missing* key, though, is silently initialised at random
    with only a log line: a critic on a random trunk would train, badly, with nothing to say why.
    """
    from transformers import AutoModel

    try:
        # dtype explicitly: in transformers 5 the default is the checkpoint's dtype (often bf16), and the
        # critic is trained, so it needs float32 master weights (see grpokit.modeling.load_model).
        backbone, info = AutoModel.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=trust_remote_code, output_loading_info=True
        )
    except (OSError, ValueError, SafetensorError) as e:
        raise GrpokitError(f"could not load {what} from '{path}': {e}") from None
    missing, mismatched = sorted(info.get("missing_keys", ())), list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        shown = ", ".join(str(k) for k in (missing + mismatched)[:5])
        raise GrpokitError(
            f"'{path}' does not hold the weights of its {type(backbone).__name__} backbone "
            f"({len(missing)} missing, {len(mismatched)} of the wrong shape, e.g. {shown}); expected {what} "
            f"checkpoint whose weights cover the whole transformer, or the critic would start from random weights."
        )
    return backbone
