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
              "swiglu": "SwiGLU MLP", "geglu": "GeGLU MLP", "geglu_tanh": "GeGLU MLP (tanh-approximate GELU, as Gemma)"}
_ACTIVATIONS = {"gelu": "F.gelu({})", "gelu_tanh": 'F.gelu({}, approximate="tanh")', "relu": "F.relu({})",
                "silu": "F.silu({})"}
_BLOCK_DOCS = {
    ("pre", False): "Pre-norm residual block: x + attention(norm(x)), then x + MLP(norm(x)).",
    ("post", False): "Post-norm residual block (OLMo 2): x + norm(attention(x)), then x + norm(MLP(x)).",
    ("sandwich", False): "Sandwich-norm residual block (Gemma 2 and 3): x + norm(attention(norm(x))), then "
                         "x + norm(MLP(norm(x))).",
    ("pre", True): "Parallel residual block (GPT-NeoX): x + attention(norm(x)) + MLP(norm'(x)), both from the "
                   "block's input.",
}
# the float knobs of post-training methods that their loss functions in objectives.py take as defaults
_LOSS_KNOBS = ("beta", "clip", "value_clip", "value_coef", "kl_coef")


def features(spec: Spec) -> dict[str, bool]:
    """The code paths the spec uses, by the names the templates' ``#if`` lines test: the architecture's
    (``spec.model.architecture``), the layout's and the post-training method's."""
    arch, ckpt, post = spec.model.architecture, spec.parallelism.activation_checkpointing, spec.post_training
    scaling = arch.rope_scaling
    adapter = post.adapter.type if post else "none"
    base = post.base_precision if post else None
    kinds = {layer.attention for layer in arch.layers}
    prefix = adapter == "prefix"
    # document masking: pretraining batches that pack several documents per row (llmspec.data)
    segments = spec.data.document_masking and post is None
    masked = bool(kinds - {"full"}) or prefix or segments
    return {
        # the method's own name: the objectives template has a block per method with a loss of its own
        **{method: post is not None and post.method == method for method in METHODS},
        "rl": post is not None and post.generates, "adapter": adapter != "none",
        "lora": adapter == "lora", "lora_dropout": adapter == "lora" and post.adapter.dropout > 0,
        "prefix": prefix, "value_head": post is not None and post.value_model,
        "nf4": base == "nf4", "int8": base == "int8", "quantised": base in ("nf4", "int8"),
        "rope": arch.rope, "learned": arch.position == "learned",
        "rope_scaling": scaling is not None,
        **{f"rope_{kind}": scaling is not None and scaling.type == kind
           for kind in ("llama3", "linear", "yarn", "longrope")},
        "partial_rotary": arch.partial_rotary, "nope": arch.nope, "local_rope": arch.local_rope,
        "fused_qkv": arch.fused_qkv, "qk_norm": arch.qk_norm != "none",
        "qk_norm_head": arch.qk_norm == "head", "qk_norm_full": arch.qk_norm == "full",
        "rmsnorm": arch.norm == "rmsnorm", "layernorm": arch.norm == "layernorm",
        "pre_norm": arch.norm_placement == "pre", "post_norm": arch.norm_placement == "post",
        "sandwich": arch.norm_placement == "sandwich", "parallel_residual": arch.parallel_residual,
        "gated": arch.gated, "moe": arch.moe is not None,
        "capacity": arch.moe is not None and arch.moe.capacity_factor is not None, "tied": arch.tie_embeddings,
        "sliding_window": "sliding" in kinds, "chunked": "chunked" in kinds, "layered": not arch.uniform,
        "masked": masked, "context": arch.rope or masked, "segments": segments,
        "softcap": arch.attn_softcap is not None, "final_softcap": arch.final_softcap is not None,
        "query_scale": arch.query_scale is not None, "embed_scale": arch.embed_scale is not None,
        "dropout": arch.dropout > 0,
        "selective": ckpt == "selective", "full": ckpt == "full", "checkpointing": ckpt != "none",
        "pipeline": spec.parallelism.pipeline > 1,
    }


def values(spec: Spec, params_total: int | None = None) -> dict[str, str]:
    """Placeholder values: Python literals for ``ModelConfig`` defaults and the few spelled-out fragments
    (``params_total``: the plan's exact parameter count for the header, where the caller planned already)."""
    from llmspec.planner.training import plan  # plan → compile: the header quotes the exact parameter count

    arch = spec.model.architecture
    flags = features(spec)
    scaling = arch.rope_scaling
    out = {
        "name": spec.name,
        "title": f"{spec.name}: a decoder-only transformer language model.",
        "summary": _summary(spec, params_total if params_total is not None else
                            plan(spec, alternatives=False).params["total"]),
        "vocab_size": arch.vocab_size, "d_model": arch.d_model, "n_layers": arch.n_layers, "n_heads": arch.n_heads,
        "n_kv_heads": arch.n_kv_heads, "head_dim": arch.head_dim, "d_ff": arch.d_ff, "max_seq_len": arch.max_seq_len,
        "norm_eps": float(arch.norm_eps), "rope_theta": float(arch.rope_theta), "init_std": float(arch.init_std),
        "dropout": float(arch.dropout), "rotary_dim": arch.rotary_dim,
        "layer_types": tuple(layer.attention for layer in arch.layers),
        "nope_layers": tuple(index for index, layer in enumerate(arch.layers) if arch.rope and not layer.rope),
        "rope_local_theta": float(arch.rope_local_theta) if arch.rope_local_theta else None,
        "sliding_window": spec.model.sliding_window, "attention_chunk_size": spec.model.attention_chunk_size,
        "query_scale": arch.query_scale, "attn_softcap": arch.attn_softcap, "final_softcap": arch.final_softcap,
        "embed_scale": arch.embed_scale,
        "n_experts": arch.moe.n_experts if arch.moe else None, "top_k": arch.moe.top_k if arch.moe else None,
        "capacity_factor": float(arch.moe.capacity_factor) if arch.moe and arch.moe.capacity_factor else None,
        "rope_scaling_factor": float(scaling.factor) if scaling else None,
        "rope_low_freq_factor": float(scaling.low_freq_factor) if scaling else None,
        "rope_high_freq_factor": float(scaling.high_freq_factor) if scaling else None,
        "rope_original_max_seq_len": scaling.original_max_seq_len if scaling else None,
        "rope_beta_fast": float(scaling.beta_fast) if scaling else None,
        "rope_beta_slow": float(scaling.beta_slow) if scaling else None,
        "rope_truncate": scaling.truncate if scaling else None,
        "rope_attention_factor": arch.rope_attention_factor,
        "rope_short_factor": tuple(scaling.short_factor) if scaling and scaling.short_factor else None,
        "rope_long_factor": tuple(scaling.long_factor) if scaling and scaling.long_factor else None,
        "bias": arch.bias, "qkv_bias": arch.qkv_bias,
    }
    post = spec.post_training
    if post is not None:
        out.update({
            "lora_targets": tuple(post.lora_targets(arch.fused_qkv, arch.gated, arch.moe is not None)),
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
        rendered["lora_targets"] = _string_tuple(out["lora_targets"])
        rendered["method"] = post.method  # prose: objectives.py's title
        if hasattr(post, "loss"):  # dpo's choice of loss: a validated name, double-quoted as ruff formats it
            rendered["loss"] = f'"{post.loss}"'
        alpha, r = post.adapter.alpha, post.adapter.r
        rendered["lora_scale_text"] = f"alpha / sqrt(r) = {alpha:g} / sqrt({r})" if post.adapter.rslora else \
            f"alpha / r = {alpha:g} / {r}"
    rendered["layer_types"] = _string_tuple(out["layer_types"])  # fixed names: full, sliding, chunked
    act = _ACTIVATIONS[arch.activation]
    rope_type = "torch.Tensor | None" if flags["nope"] else "torch.Tensor"
    rope_params = f", cos: {rope_type}, sin: {rope_type}" if arch.rope else ""
    rope_args = ", cos, sin" if arch.rope else ""
    mask_params, mask_args = (", mask: torch.Tensor | None", ", mask") if flags["masked"] else ("", "")
    rendered.update({
        "mlp_name": _MLP_NAMES[arch.mlp],
        "activate_gate": act.format("self.gate_proj(x)"), "activate_up": act.format("self.up_proj(x)"),
        "gqa_arg": ", enable_gqa=True" if arch.n_kv_heads < arch.n_heads else "",
        "scale_arg": ", scale=self.scale" if flags["query_scale"] else "",
        "attention_doc": _attention_doc(arch),
        "block_doc": _BLOCK_DOCS[arch.norm_placement, arch.parallel_residual],
        "layer_param": ", layer: int" if flags["layered"] else "", "layer_arg": ", layer" if flags["layered"] else "",
        # What attention needs besides x (RoPE tables, the mask), passed down the same way everywhere:
        # Model.run_blocks → Block.forward → Attention.forward.
        "context_params": rope_params + mask_params, "context_args": rope_args + mask_args,
        "rope_params": rope_params, "rope_args": rope_args, "mask_arg": mask_args,
        "embed_start": ", start" if flags["learned"] else "", "blocks_start": ", start" if flags["context"] else "",
    })
    return rendered


def _string_tuple(names: tuple[str, ...]) -> str:
    """A tuple of fixed or validated names as ruff formats it (double quotes, a trailing comma for one)."""
    quoted = [f'"{name}"' for name in names]
    return f"({', '.join(quoted)}{',' if len(quoted) == 1 else ''})"


def _attention_doc(arch) -> str:
    kind = "Causal self-attention" if arch.attn_softcap is None else "Causal self-attention with soft-capped scores"
    projections = "one fused q/k/v projection" if arch.fused_qkv else "q/k/v projections"
    if arch.qk_norm != "none":
        projections += ", QK-norm"
    if arch.rope:
        projections += ", rotary positions" + (" on part of each head" if arch.partial_rotary else "")
    core = "SDPA (flash where available)" if arch.attn_softcap is None else "scores written out"
    # a docstring of the class body: 4 spaces and three quotes before it, the rest wraps under them
    return textwrap.fill(f"{kind}: {projections}, {core}, output projection.", width=113,
                         subsequent_indent="    ")


def _summary(spec: Spec, params: int) -> str:
    mo, arch = spec.model, spec.model.architecture
    heads = ("MHA" if mo.n_kv_heads == mo.n_heads else "MQA" if mo.n_kv_heads == 1
             else f"GQA, {mo.n_kv_heads} kv heads")
    parts = [f"{mo.n_layers} layers", f"d_model {mo.d_model}", f"{mo.n_heads} heads ({heads})",
             "RoPE" if mo.position == "rope" else "learned positions",
             "RMSNorm" if mo.norm == "rmsnorm" else "LayerNorm", _MLP_NAMES[mo.mlp]]
    if mo.moe:
        parts.append(f"{mo.moe.n_experts} experts, top-{mo.moe.top_k}"
                     + (f", capacity factor {mo.moe.capacity_factor:g}" if mo.moe.capacity_factor else ""))
    kinds = arch.kinds
    if set(kinds) == {("sliding", mo.sliding_window)}:
        parts.append(f"sliding window {mo.sliding_window}")
    elif set(kinds) != {("full", None)}:
        parts.append(", ".join(f"{count} {kind}" + (f" ({span})" if span else "") + " layer" + "s" * (count > 1)
                               for (kind, span), count in sorted(kinds.items(), key=lambda item: item[0][0])))
    for present, text in ((mo.qk_norm != "none", f"QK-norm ({mo.qk_norm})"),
                          (mo.norm_placement != "pre", f"{mo.norm_placement}-norm blocks"),
                          (mo.parallel_residual, "parallel residual"), (arch.nope, "NoPE layers"),
                          (arch.partial_rotary, f"RoPE on {arch.rotary_dim} of {arch.head_dim} dims"),
                          (mo.attn_softcap is not None, "soft-capped attention"),
                          (mo.final_softcap is not None, "soft-capped logits"),
                          (mo.tie_embeddings, "tied embeddings")):
        if present:
            parts.append(text)
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

    return _wrap_long_lines(_PLACEHOLDER.sub(fill, "\n".join(kept) + "\n"))


_SIGNATURE = re.compile(r"^(?P<indent> *)def (?P<name>\w+)\((?P<params>.*)\)(?P<returns> -> .*)?:$")
_TUPLE_FIELD = re.compile(r"^(?P<indent> *)(?P<field>\w+: [^=]+ = )\((?P<items>[^()]*)\)$")
_CALL = re.compile(r"^(?P<indent> *)(?P<head>[^()]*\w)\((?P<args>[^()]*)\)$")


def _wrap_long_lines(source: str) -> str:
    """Break the lines whose length varies with the spec as ruff formats them when they pass 120 characters: a
    ``def`` line's parameters or a call's arguments on a line of their own, a tuple default's items on one line or
    one per line."""
    lines = []
    for line in source.split("\n"):
        signature, field, call = _SIGNATURE.match(line), _TUPLE_FIELD.match(line), _CALL.match(line)
        if len(line) <= 120 or not (signature or field or call):
            lines.append(line)
        elif call and not field:
            indent = call["indent"]
            lines += [f"{indent}{call['head']}(", f"{indent}    {call['args']}", f"{indent})"]
        elif signature:
            indent = signature["indent"]
            lines += [f"{indent}def {signature['name']}(", f"{indent}    {signature['params']}",
                      f"{indent}){signature['returns'] or ''}:"]
        else:
            indent, items = field["indent"], field["items"].rstrip(",").split(", ")
            inner = f"{indent}    {', '.join(items)}"
            body = [inner] if len(inner) <= 120 else [f"{indent}    {item}," for item in items]
            lines += [f"{indent}{field['field']}(", *body, f"{indent})"]
    return "\n".join(lines)


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
