"""What a model and method cost, read off the meta device: parameters by kind, and the activations autograd
keeps, per token of a sequence, with and without gradient checkpointing.

The model is built from its config on the meta device (no weights exist, nothing is read from disk), the
method is applied to it exactly as training applies it, and one forward pass runs on fake tensors (shapes
and dtypes, no data) under the same autocast training uses. Every tensor autograd saves for the backward
pass is counted once, so the figure follows the real architecture (GQA, head dims, norms, the adapter's
dropout copies) instead of a textbook formula.
"""

# Lazy imports: torch, transformers (inside the functions that need them).

import json
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf

from onestop.methods import METHOD_IDENTITY, apply_lora, lora_arguments, method_from_config
from onestop.models.precision import keep_fp32_master_weights
from onestop.models.zoo import native_config, native_lora_targets

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """Sizes of one model with one method applied; activation figures are bytes per token of a sequence."""

    params_total: int
    params_embedding: int
    params_head: int
    """Parameters of the output head; 0 when it shares the input embedding's weights."""
    params_trainable: int
    trainable_bytes: int
    """Bytes of the trainable parameters in their own dtype (adapters stay fp32 on a bf16 base)."""
    frozen_bytes: int
    frozen_linear_params: int
    """Frozen parameters inside the decoder's linear layers: what 4-bit loading (QLoRA) shrinks."""
    matmul_params: int
    """Parameters used in matrix multiplies per token (every linear layer and the output head)."""
    trainable_matmul_params: int
    layers: int
    hidden_size: int
    vocab_size: int
    attention_width: int
    """Query heads x head dim: the width of the attention score and value products."""
    saved_per_token: float
    """Activation bytes autograd keeps per token without checkpointing (decoder and embeddings)."""
    layer_saved_per_token: float
    """Of which one decoder layer's: what a checkpointed layer recomputes and holds during its backward."""
    layer_input_per_token: float
    """Bytes per token of one layer's input (the residual stream): what checkpointing keeps per layer."""
    backward_frozen_matmul_params: int = 0
    """Frozen matmul parameters the backward pass goes through (for their input gradients): those at or above
    the lowest layer that trains, and the output head."""
    backward_layers: int = 0
    """Decoder layers the backward pass goes through."""
    adapter: bool = False
    """The method trains an adapter beside the frozen base (its weights are extra) rather than the base's own."""
    weight_copy_bytes: int = 0
    """Half-precision copies of fp32 decoder weights that autocast makes for the matmuls and autograd keeps for
    the backward pass (fp32 master weights under bf16-mixed, an fp32 base under 16-mixed): a fixed cost, not
    per token, and not part of `saved_per_token`."""
    head_copy_bytes: int = 0
    """The same copy of the output head's weight, when it is fp32 under half-precision autocast."""

    @property
    def checkpointed_per_token(self) -> float:
        """Activation bytes per token with every decoder layer checkpointed: each layer's input, the layers
        outside the decoder stack, and one layer recomputed at a time during the backward pass."""
        outside = self.saved_per_token - self.layers * self.layer_saved_per_token
        return self.layers * self.layer_input_per_token + max(outside, 0) + self.layer_saved_per_token

    def to_dict(self) -> dict:
        return asdict(self)


def probe(
    architecture: dict,
    method: DictConfig,
    weights_dtype: str,
    autocast_dtype: str | None,
    seq_len: int,
    precision: str = "32-true",
    strategy: str = "auto",
):
    """The ModelShape of `architecture` (a config.json dict) trained with `method` at `seq_len`, its weights
    loaded in `weights_dtype` and, as training does under `precision` and `strategy`, the trainable ones
    raised to fp32 master weights (onestop.models.precision.keep_fp32_master_weights)."""
    key = json.dumps(
        [
            architecture,
            OmegaConf.to_container(method, resolve=True),
            weights_dtype,
            autocast_dtype,
            seq_len,
            precision,
            strategy,
        ],
        sort_keys=True,
        default=str,
    )
    return _probe(key)


@lru_cache(maxsize=64)
def _probe(key: str) -> ModelShape:
    import torch
    from transformers import AutoModelForCausalLM

    architecture, method, weights_dtype, autocast_dtype, seq_len, precision, strategy = json.loads(key)
    config = native_config(architecture)
    config.use_cache = False
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices peft and transformers raise about each other
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, weights_dtype), attn_implementation="sdpa"
        )
        head = model.get_output_embeddings()
        embedding = model.get_input_embeddings()
        method = OmegaConf.create(method)
        if "target_modules" in method:  # fused projections of remote-code families are split in the native model
            method.target_modules = native_lora_targets(architecture, list(method.target_modules))
        model = apply_method(model, method)
        keep_fp32_master_weights(model, precision, strategy)
    model.train()

    counts = _parameter_counts(model, embedding.weight, head.weight)
    saved, per_layer, layer_input, copies = _saved_activations(model, seq_len, autocast_dtype)
    head_weight = model.get_output_embeddings().weight
    head_copy = head_weight.numel() * 2 if autocast_dtype and head_weight.dtype == torch.float32 else 0
    return ModelShape(
        **counts,
        layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        attention_width=config.num_attention_heads
        * (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads),
        saved_per_token=saved / seq_len,
        layer_saved_per_token=per_layer / seq_len,
        layer_input_per_token=layer_input / seq_len,
        adapter=bool(method.get("adapter")),
        weight_copy_bytes=copies,
        head_copy_bytes=head_copy,
    )


def apply_method(model, method: DictConfig):
    """The method applied to a meta-device model as training applies it; for QLoRA, what peft's
    prepare_model_for_kbit_training and bitsandbytes do around the 4-bit linears, then the LoRA half (the 4-bit
    storage is counted by the estimate: bitsandbytes cannot quantize a model that has no weights)."""
    if method.get("quantization"):
        _as_4bit_training_holds_it(model)
        return apply_lora(model, **lora_arguments(method))
    node = OmegaConf.create({k: v for k, v in method.items() if k not in ("quantization",)})
    missing = [k for k in METHOD_IDENTITY if k not in node]
    if missing:
        raise ValueError(f"method node lacks {missing}")
    return method_from_config(node)(model)


def _as_4bit_training_holds_it(model) -> None:
    """The bf16 meta model as QLoRA trains it: prepare_model_for_kbit_training raises every weight that is not
    4-bit (embeddings, output head, norms, biases) to fp32, so the residual stream is fp32 too; and a
    bitsandbytes 4-bit linear computes in bf16 but returns its input's dtype, which the hooks here mimic on the
    decoder linears that stand in for the 4-bit ones."""
    import torch

    head = model.get_output_embeddings()
    quantized = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    four_bit = {id(m.weight) for m in quantized}
    for parameter in model.parameters():
        if id(parameter) not in four_bit and parameter.dtype in (torch.bfloat16, torch.float16):
            parameter.data = parameter.data.float()
    for module in quantized:
        module.register_forward_hook(lambda module, args, output: output.to(args[0].dtype) if args else output)


def _parameter_counts(model, embedding_weight, head_weight) -> dict:
    """Parameters by kind; `head_weight` is the output head's weight, tied to the embedding or not."""
    import torch

    seen: set[int] = set()
    total = trainable = trainable_bytes = frozen_bytes = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        size = parameter.numel() * parameter.element_size()
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
            trainable_bytes += size
        else:
            frozen_bytes += size

    def linears(module):
        return [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear) and m.weight is not head_weight]

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = _decoder_layers(base)
    # The backward pass stops below the lowest layer that trains (freeze tuning): layers under it need none.
    trains = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    lowest = 0 if embedding_weight.requires_grad else next((i for i, t in enumerate(trains) if t), len(layers))
    weights = linears(model)
    head_params = head_weight.numel()
    frozen_in_backward = sum(w.numel() for layer in layers[lowest:] for w in linears(layer) if not w.requires_grad)
    return {
        "params_total": total,
        "params_embedding": embedding_weight.numel(),
        "params_head": 0 if head_weight is embedding_weight else head_params,
        "params_trainable": trainable,
        "trainable_bytes": trainable_bytes,
        "frozen_bytes": frozen_bytes,
        "frozen_linear_params": sum(w.numel() for w in weights if not w.requires_grad),
        "matmul_params": sum(w.numel() for w in weights) + head_params,
        "trainable_matmul_params": sum(w.numel() for w in weights if w.requires_grad)
        + (head_params if head_weight.requires_grad else 0),
        "backward_frozen_matmul_params": frozen_in_backward + (0 if head_weight.requires_grad else head_params),
        "backward_layers": len(layers) - lowest,
    }


def _saved_activations(model, seq_len: int, autocast_dtype: str | None) -> tuple[int, int, int, int]:
    """Bytes autograd saves in one forward pass of one sequence through the decoder: in total, inside the
    largest decoder layer, of one layer's input, and, apart, the half-precision copies of weights among them."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with FakeTensorMode(allow_non_fake_inputs=True):
        _to_fake(model)
        parameters = {p.untyped_storage()._cdata for p in model.parameters()}
        casts = _weight_casts(parameters)
        saved: dict[int, int] = {}
        copies: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage._cdata in casts.storages:
                copies[storage._cdata] = storage.nbytes()
            elif storage._cdata not in parameters:
                saved[storage._cdata] = max(saved.get(storage._cdata, 0), storage.nbytes())
            return tensor

        layer_bytes: list[int] = []
        layer_inputs: list[int] = []

        def before_layer(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            layer_inputs.append(hidden.numel() * hidden.element_size())
            layer_bytes.append(-sum(saved.values()))

        def after_layer(module, args, kwargs, output):
            layer_bytes[-1] += sum(saved.values())

        layers = _decoder_layers(base)
        hooks = [layer.register_forward_pre_hook(before_layer, with_kwargs=True) for layer in layers]
        hooks += [layer.register_forward_hook(after_layer, with_kwargs=True) for layer in layers]
        input_ids = torch.zeros((1, seq_len), dtype=torch.long)
        with ExitStack() as stack:
            stack.enter_context(_one_sequence_per_row())
            if autocast_dtype:
                stack.enter_context(torch.autocast("cpu", dtype=getattr(torch, autocast_dtype)))
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
            stack.enter_context(casts)
            base.get_decoder()(input_ids=input_ids)
        for hook in hooks:
            hook.remove()
    return sum(saved.values()), max(layer_bytes, default=0), max(layer_inputs, default=0), sum(copies.values())


@contextmanager
def _one_sequence_per_row() -> Iterator[None]:
    """While inside: transformers' packed-sequence detection answers "one sequence per row", as it does on real
    position ids that count up from 0.

    With no attention mask, transformers reads the position ids for several sequences packed into one row
    (`transformers.masking_utils.find_packed_sequence_indices`) and, on fake tensors, whose values it cannot read,
    assumes they are packed: a block-diagonal mask would be built and counted that training never makes. The
    probe's row holds one sequence, so the detection's answer is known; the module's function is put back on
    leaving, even after an error."""
    from transformers import masking_utils

    detect = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = detect


def _weight_casts(parameters: set[int]):
    """A dispatch mode recording the storages of dtype casts of parameters (autocast's copies of fp32 weights),
    so that the copies autograd saves are told apart from activations: they cost the same at any length."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class WeightCasts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.storages: set[int] = set()
            self._outputs: list = []  # kept alive: a freed storage's address could come back as an activation's

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            output = func(*args, **(kwargs or {}))
            source = args[0] if args else None
            if (
                func is torch.ops.aten._to_copy.default
                and isinstance(source, torch.Tensor)
                and source.untyped_storage()._cdata in parameters
            ):
                self.storages.add(output.untyped_storage()._cdata)
                self._outputs.append(output)
            return output

    return WeightCasts()


def _decoder_layers(base):
    import torch

    lists = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


def _to_fake(model) -> None:
    """Swap every meta parameter and buffer for a fake CPU tensor of the same shape, dtype and sharing."""
    import torch

    fakes: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                if id(parameter) not in fakes:
                    empty = torch.empty(parameter.shape, dtype=parameter.dtype, device="cpu")
                    fakes[id(parameter)] = torch.nn.Parameter(empty, requires_grad=parameter.requires_grad)
                module._parameters[name] = fakes[id(parameter)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device="cpu")
