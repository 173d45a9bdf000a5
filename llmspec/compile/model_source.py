"""Render a spec's generated Python files from annotated templates, one per file.

- ``model.py`` (``templates/model.py.in``): the model, as nanoGPT's: ``forward(idx, targets=None) -> (logits,
  loss)`` with next-token cross-entropy, generation, adapters, quantised storage;
- ``objectives.py``: the loss functions of a post-training method that trains on something else than model.py's
  cross-entropy (what a run calls each step and ``measure`` counts); absent for pretraining and sft;
- ``pipeline.py``: the model as a flat list of layers for DeepSpeed's pipeline engine (``pipeline > 1`` only).

Each template holds every code path; ``#if`` lines name the features a path needs (``and``, ``or``, ``not`` over the
names in ``features``). Placeholders ``{{name}}`` take literal Python values from the spec. What the spec does not
use never reaches the output, so a GPT-2 file holds no RoPE code. No ``eval``: conditions are parsed here, and every
substituted value is ``repr`` of a validated number or a fixed string chosen below.
"""

from __future__ import annotations

import re
import textwrap
from importlib import resources

from llmspec.spec.post_training import METHODS
from llmspec.spec.schema import Spec

# The generated Python files and their templates (templates/).
TEMPLATES = {"model.py": "model.py.in", "objectives.py": "objectives.py.in", "pipeline.py": "pipeline.py.in"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

_MLP_NAMES = {"gelu": "GELU MLP", "gelu_tanh": "GELU MLP (tanh approximation, as GPT-2)", "relu": "ReLU MLP",
              "swiglu": "SwiGLU MLP", "geglu": "GeGLU MLP"}
_ACTIVATIONS = {"gelu": "F.gelu({})", "gelu_tanh": 'F.gelu({}, approximate="tanh")', "relu": "F.relu({})",
                "swiglu": "F.silu({})", "geglu": "F.gelu({})"}
# the float knobs of post-training methods that their loss functions in objectives.py take as defaults
_LOSS_KNOBS = ("beta", "clip", "value_clip", "value_coef", "kl_coef")


def features(spec: Spec) -> dict[str, bool]:
    """The code paths the spec uses, by the names the templates' ``#if`` lines test."""
    mo, ckpt, post = spec.model, spec.parallelism.activation_checkpointing, spec.post_training
    scaling = mo.rope_scaling if mo.position == "rope" else None
    adapter = post.adapter.type if post else "none"
    base = post.base_precision if post else None
    return {
        # the method's own name: the objectives template has a block per method with a loss of its own
        **{method: post is not None and post.method == method for method in METHODS},
        "rl": post is not None and post.generates, "adapter": adapter != "none",
        "lora": adapter == "lora", "lora_dropout": adapter == "lora" and post.adapter.dropout > 0,
        "prefix": adapter == "prefix", "value_head": post is not None and post.value_model,
        "nf4": base == "nf4", "int8": base == "int8", "quantised": base in ("nf4", "int8"),
        "rope": mo.position == "rope", "learned": mo.position == "learned",
        "rope_scaling": scaling is not None,
        "rope_llama3": scaling is not None and scaling.type == "llama3",
        "rope_linear": scaling is not None and scaling.type == "linear",
        "fused_qkv": mo.fused_qkv,
        "rmsnorm": mo.norm == "rmsnorm", "layernorm": mo.norm == "layernorm",
        "gated": mo.gated, "moe": mo.moe is not None,
        "capacity": mo.moe is not None and mo.moe.capacity_factor is not None, "tied": mo.tie_embeddings,
        "sliding_window": mo.sliding_window is not None, "dropout": mo.dropout > 0,
        "selective": ckpt == "selective", "full": ckpt == "full", "checkpointing": ckpt != "none",
        "pipeline": spec.parallelism.pipeline > 1,
    }


def values(spec: Spec, params_total: int | None = None) -> dict[str, str]:
    """Placeholder values: Python literals for ``ModelConfig`` defaults and the few spelled-out fragments
    (``params_total``: the plan's exact parameter count for the header, where the caller planned already)."""
    from llmspec.planner.training import plan  # plan → compile: the header quotes the exact parameter count

    mo = spec.model
    rope, window = mo.position == "rope", mo.sliding_window is not None
    prefix = spec.post_training is not None and spec.post_training.adapter.type == "prefix"
    scaling = mo.rope_scaling
    out = {
        "name": spec.name,
        "title": f"{spec.name}: a decoder-only transformer language model.",
        "summary": _summary(spec, params_total if params_total is not None else
                            plan(spec, alternatives=False).params["total"]),
        "vocab_size": mo.vocab_size, "d_model": mo.d_model, "n_layers": mo.n_layers, "n_heads": mo.n_heads,
        "n_kv_heads": mo.n_kv_heads, "head_dim": mo.head_dim, "d_ff": mo.d_ff, "max_seq_len": mo.max_seq_len,
        "norm_eps": float(mo.norm_eps), "rope_theta": float(mo.rope_theta), "init_std": float(mo.init_std),
        "dropout": float(mo.dropout), "sliding_window": mo.sliding_window,
        "n_experts": mo.moe.n_experts if mo.moe else None, "top_k": mo.moe.top_k if mo.moe else None,
        "capacity_factor": float(mo.moe.capacity_factor) if mo.moe and mo.moe.capacity_factor else None,
        "rope_scaling_factor": float(scaling.factor) if scaling else None,
        "rope_low_freq_factor": float(scaling.low_freq_factor) if scaling else None,
        "rope_high_freq_factor": float(scaling.high_freq_factor) if scaling else None,
        "rope_original_max_seq_len": scaling.original_max_seq_len if scaling else None,
        "bias": mo.bias, "qkv_bias": mo.bias or mo.qkv_bias,
    }
    post = spec.post_training
    if post is not None:
        out.update({
            "lora_targets": tuple(post.lora_targets(mo.fused_qkv, mo.gated, mo.moe is not None)),
            "lora_rank": post.adapter.r, "lora_scale": float(post.lora_scale),
            "lora_dropout": float(post.adapter.dropout), "n_prefix": post.adapter.n_virtual,
            "double_quant": post.double_quant,
        })
        # the knobs the method's loss functions take as defaults (those of its class; other methods have none)
        out.update({knob: float(getattr(post, knob)) for knob in _LOSS_KNOBS if hasattr(post, knob)})
    # Title and summary are docstring prose; every other value becomes a Python literal.
    rendered = {key: value if key in ("title", "summary") else repr(value) for key, value in out.items()}
    if post is not None:
        # validated names only (targets are checked against the model's linears): double-quoted, as ruff formats
        targets = [f'"{name}"' for name in out["lora_targets"]]
        rendered["lora_targets"] = f"({', '.join(targets)}{',' if len(targets) == 1 else ''})"
        rendered["method"] = post.method  # prose: objectives.py's title
        if hasattr(post, "loss"):  # dpo's choice of loss: a validated name, double-quoted as ruff formats it
            rendered["loss"] = f'"{post.loss}"'
        alpha, r = post.adapter.alpha, post.adapter.r
        rendered["lora_scale_text"] = f"alpha / sqrt(r) = {alpha:g} / sqrt({r})" if post.adapter.rslora else \
            f"alpha / r = {alpha:g} / {r}"
    act = _ACTIVATIONS[mo.mlp]
    rendered.update({
        "mlp_name": _MLP_NAMES[mo.mlp],
        "activate_gate": act.format("self.gate_proj(x)"), "activate_up": act.format("self.up_proj(x)"),
        "gqa_arg": ", enable_gqa=True" if mo.n_kv_heads < mo.n_heads else "",
        # What attention needs besides x (RoPE tables, the sliding-window mask), passed down the same way
        # everywhere: Model.forward → Block.forward → Attention.forward.
        "context_params": (", cos: torch.Tensor, sin: torch.Tensor" if rope else "")
        + (", mask: torch.Tensor | None" if window else "") + (", mask: torch.Tensor" if prefix else ""),
        "context_args": (", cos, sin" if rope else "") + (", mask" if window or prefix else ""),
    })
    return rendered


def _summary(spec: Spec, params: int) -> str:
    mo = spec.model
    heads = ("MHA" if mo.n_kv_heads == mo.n_heads else "MQA" if mo.n_kv_heads == 1
             else f"GQA, {mo.n_kv_heads} kv heads")
    parts = [f"{mo.n_layers} layers", f"d_model {mo.d_model}", f"{mo.n_heads} heads ({heads})",
             "RoPE" if mo.position == "rope" else "learned positions",
             "RMSNorm" if mo.norm == "rmsnorm" else "LayerNorm", _MLP_NAMES[mo.mlp]]
    if mo.moe:
        parts.append(f"{mo.moe.n_experts} experts, top-{mo.moe.top_k}"
                     + (f", capacity factor {mo.moe.capacity_factor:g}" if mo.moe.capacity_factor else ""))
    if mo.sliding_window:
        parts.append(f"sliding window {mo.sliding_window}")
    if mo.tie_embeddings:
        parts.append("tied embeddings")
    parts.append(f"{params:,} parameters")
    return textwrap.fill(", ".join(parts) + ".", width=118)


def render(template: str, flags: dict[str, bool], substitutions: dict[str, str], name: str = "template") -> str:
    """Keep the lines whose enclosing ``#if`` conditions (nested) all hold, then fill the placeholders."""
    kept: list[str] = []
    open_conditions: list[bool] = []
    for number, line in enumerate(template.splitlines(), 1):
        if line.startswith("#if "):
            open_conditions.append(_holds(line[4:], flags, f"{name}:{number}"))
        elif line.startswith("#endif"):
            if not open_conditions:
                raise ValueError(f"{name}:{number}: #endif without #if")
            open_conditions.pop()
        elif all(open_conditions):
            kept.append(line)
    if open_conditions:
        raise ValueError(f"{name}: {len(open_conditions)} #if without #endif")

    def fill(match: re.Match[str]) -> str:
        return substitutions[match.group(1)]

    return _PLACEHOLDER.sub(fill, "\n".join(kept) + "\n")


def _holds(expression: str, flags: dict[str, bool], where: str) -> bool:
    """``a or b and not c`` with the usual precedence (``or`` binds loosest); names must be known features."""

    def term(word: str) -> bool:
        negate = word.startswith("not ")
        name = word[4:].strip() if negate else word.strip()
        if name not in flags:
            raise ValueError(f"{where}: unknown feature {name!r}")
        return flags[name] != negate

    return any(all(term(word) for word in part.split(" and ")) for part in expression.strip().split(" or "))


def template_text(file: str) -> str:
    """The annotated template of a generated file (``model.py``, ``objectives.py``, ``pipeline.py``)."""
    return resources.files("llmspec.compile").joinpath("templates", TEMPLATES[file]).read_text()


def generated_sources(spec: Spec, params_total: int | None = None) -> dict[str, str]:
    """File name → text of the Python files ``build`` writes for this spec: model.py, and beside it
    objectives.py (a method with a loss of its own) and pipeline.py (``parallelism.pipeline > 1``)."""
    flags, substitutions = features(spec), values(spec, params_total)

    def source(file: str) -> str:
        return render(template_text(file), flags, substitutions, TEMPLATES[file])

    sources = {"model.py": source("model.py")}
    if spec.post_training is not None:
        objectives = source("objectives.py")
        if "\ndef " in objectives:  # else the method trains on model.py's cross-entropy (sft)
            sources["objectives.py"] = objectives
    if flags["pipeline"]:
        sources["pipeline.py"] = source("pipeline.py")
    return sources


def model_source(spec: Spec) -> str:
    """The text of ``model.py`` for this spec."""
    return render(template_text("model.py"), features(spec), values(spec), TEMPLATES["model.py"])
