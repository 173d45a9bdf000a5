"""Parameters (the base, its adapters, its frozen storage) and FLOPs per token."""

from __future__ import annotations

import sympy as sp

from llmspec.planner.formulas.registry import _f, define, group
from llmspec.planner.formulas.symbols import (
    _ADAPTABLE,
    B,
    D,
    E,
    K,
    L,
    L_ch,
    L_sl,
    P,
    V,
    _any,
    _grads,
    a,
    adapter,
    bias,
    causal,
    cf,
    chunk,
    ck_full,
    ck_sel,
    d_h,
    doc_keys,
    doc_mask,
    dq,
    drop,
    f,
    fused,
    gated,
    h,
    k,
    ldn,
    learned,
    lg,
    lk,
    ln,
    lo,
    lq,
    lqkv,
    lu,
    lv,
    moe,
    n_norm,
    n_v,
    post_norm,
    prefix,
    q_int8,
    q_nf4,
    qk_full,
    qk_head,
    qkvb,
    rank,
    ref_copy,
    ref_fwd,
    ref_step,
    s,
    tied,
    vh,
    w_bytes,
    w_frozen,
    window,
)

# ---- parameters --------------------------------------------------------------------------------------------
group("Parameters", "exact; equals transformers' count for the same config (tests build GPT-2, Llama, Mistral, "
      "Mixtral, Qwen2 on the meta device)")
emb = define("params_embedding", V * h + learned * P * h, "token (+ learned position) embedding tables", "params")
qk_norm = define("params_qk_norm", qk_head * 2 * d_h + qk_full * (a + k) * d_h,
                 "one block's QK-norm weights: head_dim each for q and k (shared by the heads), or the whole q and k "
                 "projections' widths (OLMo 2)", "params")
attn = define("params_attention", h * (a + 2 * k) * d_h + a * d_h * h + qkvb * (a + 2 * k) * d_h + bias * h + qk_norm,
              "one attention block: q, k, v, o projections (+ biases, QK-norm weights)", "params")
expert = define("params_mlp", (2 + gated) * h * f + bias * ((1 + gated) * f + h),
                "one MLP (one expert under MoE): up (+ gate) and down projections (+ biases)", "params")
router = define("params_router", moe * h * E, "MoE router (no bias)", "params")
norm = define("params_norm", h * (1 + ln * bias), "one norm: weight (+ LayerNorm bias)", "params")
layer = define("params_layer", attn + E * expert + router + n_norm * norm,
               "one transformer block (two norms, four with sandwich norms)", "params")
# What DeepSpeed's AutoTP (the engine `run` uses for tensor parallelism) leaves whole on every rank; the rest of a
# stage's parameters is split t ways. It shards the q/k/v/gate/up projections by output (with their biases), o/down
# by input, and the vocabulary of the LM head (and of an embedding tied to it), but no untied embedding table.
define("params_layer_unsplit", n_norm * norm + router + bias * h * (1 + E) + qk_norm,
       "of one block, what tensor parallelism keeps whole: norms (QK-norms' head_dim weights too), router, the "
       "biases added after the o and down projections' all-reduce", "params")
define("params_embedding_unsplit", (1 - tied) * V * h + learned * P * h,
       "embedding tables tensor parallelism keeps whole: an untied token embedding, learned positions", "params")
head = define("params_lm_head", (1 - tied) * V * h, "LM head (0 when tied to the embedding)", "params")
total = define("params_total", emb + L * layer + norm + head, "all parameters (shared ones once)", "params")
define("params_non_embedding", total - emb, "total minus embedding tables (the LM head stays in)", "params")
define("params_largest_module",
       sp.Max(V * h, learned * P * h, fused * (h + qkvb) * (a + 2 * k) * d_h + (1 - fused) * (h + qkvb) * a * d_h,
              h * f + bias * f, f * h + bias * h, moe * h * E),
       "the largest single module (embedding, LM head, a projection): what ZeRO-3 gathers at once", "params")
active = define("params_active", total - L * (E - K) * expert, "parameters used per token (MoE: top_k experts)",
                "params")
define("params_mlp_per_layer", E * expert, "the MLPs of one block: E experts under MoE, one when dense", "params")
block_norms = n_norm * L + 1
define("params_norms", block_norms * norm, "every block norm (two per block, four with sandwich norms) and the final "
       "one; QK-norms are attention's", "params")

# ---- post-training: parameters -----------------------------------------------------------------------------
group("Post-training: parameters", "LoRA (Hu et al. 2021): r·(d_in + d_out) per adapted linear, k/v GQA-sized; "
      "prefix tuning (Li & Liang 2021): n_virtual keys and values per layer and kv head; reward models end in a "
      "scalar value head instead of the LM head (Ouyang et al. 2022)")
lora_layer = define("params_lora_layer",
                    rank * (lq * (h + a * d_h) + (lk + lv) * (h + k * d_h) + lqkv * (h + (a + 2 * k) * d_h)
                            + lo * (a * d_h + h) + (lg + lu + ldn) * (h + f)),
                    "LoRA A (r × d_in) and B (d_out × r) of every adapted linear in one block", "params")
adapter_params = define("params_adapter", L * lora_layer + prefix * n_v * L * 2 * k * d_h,
                        "what an adapter trains: LoRA matrices, or prefix keys and values", "params")
base_params = define("params_base", total - vh * head, "the pretrained weights the trained model uses (a value "
                     "head replaces the LM head)", "params")
define("params_trainable", (1 - adapter) * base_params + adapter_params + vh * h,
       "parameters with gradients and optimizer states: everything (full fine-tuning) or the adapter, + a value "
       "head", "params")
frozen_params = define("params_frozen", adapter * base_params,
                       "the base under an adapter: no gradient, no optimizer state", "params")
define("params_trained_model", _f("params_trainable") + frozen_params,
       "the trained model's parameters: what trains and the frozen base under it", "params")
define("params_frozen_model", base_params + vh * h,
       "a frozen model's parameters (a reward model scoring rollouts): the base and its value head", "params")

# ---- post-training: frozen weights ---------------------------------------------------------------------------
group("Post-training: frozen weights", "QLoRA (Dettmers et al. 2023, §3): NF4 codes, 4 bits each, in blocks of 64 "
      "sharing an fp32 absmax; double quantisation stores the absmaxes as int8 around their fp32 mean with one fp32 "
      "scale per 256 (4.127 bits per weight); int8: one fp32 scale per output row (LLM.int8, Dettmers et al. 2022). "
      "Only the block linears are quantised; the last block is zero-padded")


def _nf4_bytes(n: sp.Expr) -> sp.Expr:
    blocks = sp.ceiling(n / 64)
    return 32 * blocks + (1 - dq) * 4 * blocks + dq * (blocks + 4 * sp.ceiling(blocks / 256) + 4)


# (present, d_in, d_out) of each linear in a block
_LINEARS = ((fused, h, (a + 2 * k) * d_h), (1 - fused, h, a * d_h), (2 * (1 - fused), h, k * d_h), (1, a * d_h, h),
            (gated, h, f), (1, h, f), (1, f, h))
quantised = define("params_quantised", L * sum(n * d_in * d_out for n, d_in, d_out in _LINEARS),
                   "weights of the block linears, which int8 and nf4 quantise", "params")
quantised_bytes = define("bytes_quantised",
                         L * sum(n * (q_nf4 * _nf4_bytes(d_in * d_out) + q_int8 * (d_in * d_out + 4 * d_out))
                                 for n, d_in, d_out in _LINEARS),
                         "the quantised block linears as stored: codes and constants", "B")
stored_base = define("bytes_base_stored",
                     (q_nf4 + q_int8) * quantised_bytes + (base_params - (q_nf4 + q_int8) * quantised) * w_frozen,
                     "the base as a frozen model stores it: quantised block linears + the rest at w_frozen bytes",
                     "B")
define("bytes_frozen_model", stored_base + vh * h * w_frozen,
       "a frozen model as stored (a reward model scoring rollouts): the base and its value head at w_frozen bytes",
       "B")
frozen_bytes = define("bytes_frozen", adapter * stored_base,
                      "the frozen base under an adapter (none when everything trains)", "B")
define("bytes_per_quantised_weight", sp.Rational(1, 2) + (1 - dq) * sp.Rational(4, 64)
       + dq * (sp.Rational(1, 64) + sp.Rational(4, 64 * 256)),
       "NF4 storage per weight in bytes, the last block and per-tensor constants aside (×8: 4.5 or 4.127 bits)",
       "B")
# Why "bf16-mixed" fine-tuning needs so much more memory than pure bf16 (litgpt measured 26.92 vs 9.69 GB for a
# StableLM-3B LoRA): torch autocast keeps fp32 parameters and casts each linear's weight and bias to 16-bit on use;
# the casts of trainable leaves are cached for the forward, and a frozen linear's cast is kept for backward
# wherever its input needs a gradient. llmspec's bf16 stores the weights in 16-bit instead (DeepSpeed's bf16 mode;
# a quantised base dequantises per product and keeps nothing).
define("bytes_autocast_copies", 2 * (total - emb - block_norms * norm - L * qk_norm + tied * V * h),
       "16-bit copies of every linear's weight and bias that torch autocast holds over fp32 parameters (the "
       "embedding lookup is not cast; a tied head multiplies by it): the cost of mixed precision on top of fp32 "
       "storage, which 16-bit storage does not pay", "B")
policy_bytes = define("bytes_policy",
                      adapter * (stored_base + adapter_params * w_bytes) + (1 - adapter) * base_params * w_bytes,
                      "the trained model's weights as a forward reads them (the frozen base as stored + the "
                      "adapter, or every weight at w_bytes): what generation reads per token", "B")
reference_bytes = define("bytes_reference", ref_copy * policy_bytes,
                         "a frozen copy of the starting model as the reference (DPO, PPO, GRPO with reference: "
                         "copy)", "B")

# ---- FLOPs -------------------------------------------------------------------------------------------------
group("FLOPs", "Kaplan et al. 2020 (2N per token forward, backward 2× forward); causal attention counts the "
      "lower triangle only (Megatron-LM); sliding windows and MoE top_k counted as run")
block_matmul = L * (h * (a + 2 * k) * d_h + a * d_h * h + K * (2 + gated) * h * f + moe * h * E)
matmul = define("matmul_weights", block_matmul + (1 - vh) * V * h + vh * h,
                "weights multiplied per token (the LM head even when tied, or a value head's one output; "
                "embeddings are lookups)", "params")


def _keys_seen(n: sp.Expr, span: sp.Expr = window) -> sp.Expr:
    """Keys that the queries at positions 1..n of a sliding layer see in all, each the keys up to it within the
    window (a full layer's: its window is n)."""
    w = sp.Min(span, n)
    return w * (w + 1) / 2 + (n - w) * w


def _keys_chunked(n: sp.Expr) -> sp.Expr:
    """Keys that the queries at positions 1..n of a chunked layer see in all: the keys up to each within its own
    chunk of ``chunk`` positions (the last chunk partial)."""
    whole = sp.floor(n / chunk)
    rest = n - whole * chunk
    return whole * chunk * (chunk + 1) / 2 + rest * (rest + 1) / 2


def keys_all_layers(n: sp.Expr) -> sp.Expr:
    """Keys the queries at positions 1..n see in all, summed over the layers by attention kind: a full layer every
    earlier key, a sliding one its window, a chunked one its chunk."""
    return (L - L_sl - L_ch) * _keys_seen(n, n) + L_sl * _keys_seen(n) + L_ch * _keys_chunked(n)


ctx = define("attention_context",
             causal * ((1 - doc_mask) * keys_all_layers(s) / (L * s) + doc_mask * doc_keys) + (1 - causal) * s,
             "keys each query attends to, averaged over positions and layers (causal; a sliding layer within its "
             "window, a chunked one within its chunk; within its document under document masking)", "tokens")
attn_layer = 4 * a * d_h * (ctx + prefix * n_v)
fwd_attn = define("flops_attention_per_token", L * attn_layer, "QKᵀ and AV, forward (+ prefix keys)", "FLOP")
fwd = define("flops_per_token_forward", 2 * matmul + fwd_attn + 2 * L * lora_layer,
             "forward FLOPs per token (+ LoRA branches)", "FLOP")
fwd_capacity = define("flops_capacity_per_token", moe * 2 * L * K * (cf - 1) * (2 + gated) * h * f,
                      "forward FLOPs per token that training's expert capacity adds to routing every token once: "
                      "padded rows (negative where tokens past capacity are dropped); counted as run", "FLOP")


def _frozen_backward(grad_in: int) -> sp.Expr:
    """Per token, one frozen block's backward: input gradients where needed (no weight gradients), LoRA's."""
    g = _grads(grad_in)
    inputs = (2 * grad_in * h * (a + 2 * k) * d_h + 2 * g["sdpa"] * a * d_h * h
              + 2 * h * f * (gated * g["mlp"] + g["mlp"]) + 2 * f * h * g["hidden"])
    lora = sum(flag * rank * (4 * d_out + 2 * d_in + 2 * d_in * g[which]) for flag, d_in, d_out, which in _ADAPTABLE)
    # SDPA's backward: dV (if v needs a gradient), dP (if q or k does), dQ and dK, each a quarter of 2× forward
    q_grad, k_grad, v_grad = _any(grad_in, lq, lqkv), _any(grad_in, lk, lqkv, prefix), _any(grad_in, lv, lqkv, prefix)
    return inputs + lora + attn_layer / 2 * (q_grad + k_grad + v_grad + _any(q_grad, k_grad))


frozen_bwd = define("flops_backward_frozen_per_token",
                    (L - 1) * _frozen_backward(1) + _frozen_backward(0) + (1 - vh) * 2 * V * h + vh * 4 * h,
                    "backward of a frozen base under an adapter: input gradients (the first block's only where an "
                    "adapter needs them), LoRA's weight and input gradients, the head's input gradient", "FLOP")
ref_flops = define("flops_reference_per_token",
                   ref_fwd * (2 * (block_matmul + V * h) + L * 4 * a * d_h * ctx
                              + ref_copy * (2 * L * lora_layer + L * 4 * a * d_h * prefix * n_v)),
                   "the reference's forward (the base alone under adapter_off; the whole start under copy): per "
                   "training token for DPO, in scoring for PPO/GRPO", "FLOP")
train = define("flops_per_token_train",
               (1 - adapter) * 3 * (fwd + fwd_capacity) + adapter * (fwd + frozen_bwd) + ref_step * ref_flops,
               "model FLOPs per token: forward + backward (2× forward; a frozen base: input gradients only) "
               "+ a reference forward where the step runs one (DPO, GRPO; for MFU)", "FLOP")
# Non-reentrant checkpointing stops recomputing once every saved tensor is back: a dense MLP's last matmul, whose
# output nothing saves, is skipped unless dropout or a post-norm follows it (the down projection, or under LoRA its B).
def _skipped(layers: sp.Expr) -> sp.Expr:
    return (1 - moe) * (1 - drop) * (1 - post_norm) * 2 * layers * (ldn * rank * h + (1 - ldn) * h * f)


# Under an adapter, a parallel residual's first MLP reads the frozen embedding: with no adapter of its own it needs
# no gradient, keeps nothing and is not recomputed; a full checkpoint of that block also stops after the last
# tensor its attention keeps (o_proj's LoRA A, or SDPA before a frozen o_proj).
idle = adapter * (1 - _any(_grads(0)["mlp"], lg, lu, ldn))
idle_full = idle * (2 * (2 + gated) * h * f - _skipped(1)
                    + (1 - drop) * (lo * 2 * rank * h + (1 - lo) * 2 * a * d_h * h))
recompute = define("flops_recompute_per_token",
                   ck_full * (fwd + fwd_capacity - 2 * (1 - vh) * V * h - 2 * vh * h - _skipped(L) - idle_full)
                   + ck_sel * (2 * (L - idle) * (K * cf * (2 + gated) * h * f + moe * h * E
                                                 + rank * (lg + lu + ldn) * (h + f))
                               - _skipped(L - idle)),
                   "forward recomputed in backward: every block (full) or the MLPs (selective), less the dense "
                   "down projection that early-stopping recompute skips (and a frozen first MLP that needs no "
                   "gradient)", "FLOP")
# SDPA under an arbitrary mask (document masking) computes every key: the executed attention, not the attended
att_run = define("flops_attention_executed_per_token", doc_mask * 4 * L * a * d_h * s + (1 - doc_mask) * fwd_attn,
                 "QKᵀ and AV forward as the kernel runs them: what flops_attention_per_token counts, or every key "
                 "where a document mask goes through SDPA", "FLOP")
hw = define("flops_per_token_hardware", train + recompute + (3 + ck_full) * (att_run - fwd_attn),
            "FLOPs executed per token (for HFU): the model's, recompute, and the keys a masked kernel computes "
            "beyond those attended", "FLOP")
define("flops_per_step", train * B * s, "model FLOPs per optimizer step", "FLOP")
define("flops_total", train * D, "model FLOPs for the whole run", "FLOP")
define("flops_6nd", 6 * active * D, "the 6·N·D rule, for comparison", "FLOP")

