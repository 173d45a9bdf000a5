"""Memory per GPU: model states, saved activations, transient buffers, the peak; host memory per node."""

from __future__ import annotations

import sympy as sp

from llmspec.planner.formulas.model import frozen_bytes, layer, reference_bytes
from llmspec.planner.formulas.registry import _add, define, group
from llmspec.planner.formulas.symbols import (
    P_L,
    E,
    K,
    L,
    L_here,
    P,
    V,
    _any,
    _grads,
    a,
    adapter,
    b,
    cf,
    chunk_masked,
    ck_full,
    ck_none,
    ck_sel,
    cp,
    d_h,
    d_rot,
    doc_mask,
    dp,
    drop,
    e,
    e_mask,
    e_stat,
    ep,
    f,
    first,
    fused,
    g_bpp,
    g_bucket,
    gated,
    gpn,
    h,
    k,
    kept,
    l_drop,
    last,
    ldn,
    learned,
    lg,
    lk,
    ln,
    lo,
    local_rope,
    logit_cap,
    loss_saved,
    lq,
    lqkv,
    lu,
    lv,
    m,
    masked,
    moe,
    n_gpu,
    n_norm,
    n_v,
    o_bpp,
    overlap,
    p,
    par_res,
    post_norm,
    prefetch_bucket,
    prefix,
    psi,
    qk_full,
    qk_head,
    rank,
    rank_pp,
    reduce_bucket,
    relu,
    resp_mask,
    rope,
    s,
    s_local,
    softcap,
    sp_on,
    t,
    te,
    v,
    vh,
    w_bpp,
    w_bytes,
    z3,
    z12,
)

# ---- memory: model states ----------------------------------------------------------------------------------
group("Memory: model states", "ZeRO (Rajbhandari et al. 2019); byte regimes in llmspec/planner/regimes.py; DeepSpeed "
      "estimate_zero2/zero3_model_states_mem_needs (their code, not their docs)")
mem_w = define("memory_weights", psi * w_bpp, "weights on this GPU", "B")
mem_g = define("memory_gradients", psi * g_bpp, "gradients on this GPU", "B")
mem_o = define("memory_optimizer", psi * o_bpp, "optimizer states (+ fp32 master) on this GPU", "B")
gathered = define("memory_gathered", z3 * 2 * w_bytes * P_L,
                  "ZeRO-3: the largest module gathered, 16-bit params + grads (DeepSpeed's 4·P_largest)", "B")
# ZeRO 0-2 shard only what trains: frozen weights are replicated on every GPU; ZeRO-3 partitions them too
frozen_held = 1 + z3 * (dp - 1)
mem_frozen_base = define("memory_frozen_base", frozen_bytes / frozen_held,
                         "the frozen base under an adapter on this GPU (partitioned only under ZeRO-3)", "B")
mem_reference = define("memory_reference", reference_bytes / frozen_held,
                       "a frozen reference copy on this GPU (partitioned only under ZeRO-3)", "B")
mem_frozen = define("memory_frozen", mem_frozen_base + mem_reference,
                    "frozen weights on this GPU: the base under an adapter and a reference copy", "B")
define("memory_trained_model", _add(mem_w, mem_g, mem_o, mem_frozen_base),
       "the trained model on this GPU: its states and the frozen base under it (no reference copy)", "B",
       ordered=True)
define("experts_per_gpu", E * moe / ep, "experts of each MoE layer one GPU holds (0 when dense)", "experts")
states = define("memory_model_states", sp.floor(mem_w + mem_g + mem_o + gathered + mem_frozen),
                "weights + gradients + optimizer (+ ZeRO-3 gathered module) + frozen weights", "B")

# ---- memory: activations -----------------------------------------------------------------------------------
group("Memory: activations", "per saved tensor of the compiled model (Korthikanti et al. 2022 generalised: SDPA "
      "saves q, k, v, out and fp32 log-sum-exp instead of s² scores; GQA-sized k, v; SwiGLU's wider tensors)")
norm_saved = define("act_norm", ln * (h * e + 2 * e_stat) + (1 - ln) * (8 * h + 4),
                    "per token, one norm: LayerNorm saves x + mean, rstd; RMSNorm (composite) an fp32 copy "
                    "of x, the fp32 normalised x and fp32 rstd", "B")
# Transformer Engine's FP8 linears save their input for backward as the FP8 copy they multiply (1 byte), one per
# input (Megatron fuses q/k/v and gate/up); a tensor something else saves too stays and gains that copy: SDPA's
# output (the o_proj input), ReLU's output (the down projection's), the MoE layer input (the 16-bit router's).
e_in = e - te * (e - 1)  # bytes per element of an input only a linear saves
down_extra = te * (relu - (1 - relu) * (e - 1))  # the down projection's input: an FP8 copy, or FP8 instead
half_norms = n_norm / 2  # norms in each half of a block: one (pre or post), two (sandwich)
cast = (4 - e) / 2  # 1 when a cast from fp32 to the activation dtype makes a copy (16-bit), 0 in fp32
# QK-norm (composite RMSNorm, as act_norm): an fp32 copy of its input, the fp32 normalised values, fp32 rstd per
# row; a row is a head (head), or a token's whole q or k projection (full)
act_qk = define("act_qk_norm", qk_head * (a + k) * (8 * d_h + 4) + qk_full * (8 * (a + k) * d_h + 8),
                "per token, one block's QK-norms: what RMSNorm saves of q and k (per head, or whole)", "B")
# Soft-capped attention is written out (SDPA cannot cap scores): q·kᵀ keeps q and k repeated to every query head,
# tanh keeps its output, softmax its fp32 output, and the product with v that output cast to the activation dtype
# (a copy in 16 bits) and v repeated; no log-sum-exp.
heads_kv = k + softcap * (a - k)  # key/value heads as saved: repeated to a heads where attention is written out
scores = softcap * a * s * (e + 4 + cast * e)
act_attn = define("act_attention", half_norms * norm_saved + h * e_in + (a + 2 * heads_kv) * d_h * e
                  + a * d_h * (e + te) + (1 - softcap) * 4 * a + scores + act_qk + drop * h * e_mask,
                  "per token: norm(s), q/k/v input, q, k, v, SDPA out (laid out (b, s, heads, d_h), so it is also the "
                  "o_proj input; its FP8 copy under Transformer Engine), fp32 log-sum-exp (+ dropout mask); QK-norms; "
                  "soft-capped: k and v repeated to every head and the s keys' scores of each head (tanh, fp32 "
                  "softmax, its cast) instead of the log-sum-exp", "B")
hidden_mult = 2 - relu + 2 * gated
hidden_saved = hidden_mult * e + down_extra  # bytes per hidden unit (per f)
act_mlp = define("act_mlp", half_norms * norm_saved + h * (moe * e + (1 - moe) * e_in) + (1 - moe) * hidden_saved * f
                 + moe * (K * (cf * (h * e_in + h * e + hidden_saved * f) + kept * (h * e + e) + 16) + 4 * E + 12 * K
                          + 4)
                 + drop * h * e_mask,
                 "per token: norm, MLP input, hidden tensors (GELU 2f, ReLU f, SwiGLU/GeGLU 4f; the down projection's "
                 "input in FP8 under Transformer Engine); MoE: fp32 router "
                 "probabilities, top-k indices (int64) and weights with their sum; per expert row computed the "
                 "gathered input, hidden tensors and expert output, per routed token kept its weighted output and "
                 "weight, per routed token its (token, slot) indices (the kept ones view them all)", "B")
# With a parallel residual both norms read the block input: a LayerNorm keeps that input itself (and an fp32
# RMSNorm's fp32 copy is that input), so the two norms — or the attention norm and a selective checkpoint of the
# MLP — keep one tensor between them.
shared = define("act_shared_input", par_res * (ln * h * e + (1 - ln) * 2 * h * (e - 2)),
                "per token, one block: the block input that a parallel residual's two readers keep once", "B")
act_layer = define("act_layer", act_attn + act_mlp - shared, "per token, one block, nothing recomputed", "B")
act_attn_split = define("act_attention_split", (a + 2 * heads_kv) * d_h * e + a * d_h * (e + te)
                        + (1 - softcap) * 4 * a + scores + qk_head * (a + k) * (8 * d_h + 4),
                        "of act_attention, what tensor parallelism splits by heads: q, k, v, SDPA out, "
                        "log-sum-exp or the soft-capped scores, per-head QK-norms", "B")
act_mlp_split = define("act_mlp_split", K * cf * hidden_saved * f,
                       "of act_mlp, the hidden tensors tensor parallelism splits by width", "B")
act_kept = define("act_layer_kept", ck_none * act_layer + ck_sel * (act_attn + h * e - shared) + ck_full * h * e,
                  "per token, one block, as kept for backward: all, attention + MLP input (selective), or the "
                  "block input (full)", "B")
act_kept_split = define("act_layer_kept_split", ck_none * (act_attn_split + act_mlp_split) + ck_sel * act_attn_split,
                        "of act_layer_kept, the part split across tensor-parallel ranks", "B")


# Under an adapter the base is frozen: a frozen linear keeps nothing for a weight gradient, the LoRA branch keeps
# its input and its rank-r hidden; and the first block's input (a frozen embedding) needs no gradient, so nothing
# before its first adapted linear keeps anything.
norm_frozen = define("act_norm_frozen", ln * (h * e + 2 * e_stat) + (1 - ln) * (4 * h + 4),
                     "per token, one norm with a frozen weight: LayerNorm keeps the same; RMSNorm no longer keeps "
                     "the normalised x (only the weight's gradient needs it)", "B")


def _lora_inputs(flags: tuple[sp.Expr, ...], width: sp.Expr, grad: sp.Expr) -> sp.Expr:
    # the adapted linears sharing one input keep it once; with LoRA dropout each keeps its own dropped copy, and
    # its mask when the input needs a gradient
    return (1 - l_drop) * width * e * _any(*flags) + l_drop * sum(flags) * width * (e + grad * e_mask)


def _frozen_block(grad_in: int) -> tuple[sp.Expr, sp.Expr]:
    """Per token, the attention and MLP halves of a frozen block whose input does (1) or does not (0) need a
    gradient."""
    g = _grads(grad_in)
    sdpa_grad, mlp_grad, gate_grad, up_grad = g["sdpa"], g["mlp"], g["gate"], g["up"]
    q_grad, k_grad, v_grad = _any(grad_in, lq, lqkv), _any(grad_in, lk, lqkv), _any(grad_in, lv, lqkv)
    scores_grad = _any(q_grad, k_grad)
    # A frozen norm keeps its input (RMSNorm: its fp32 copy and rstd) where that input needs a gradient: the block
    # input's pre-norm, the attention output's and the MLP output's post-norms, the q and k projections' QK-norms
    pre = half_norms - post_norm
    mlp_out_grad = _any(g["hidden"], ldn)
    qk_frozen = (qk_head * (q_grad * a + k_grad * k) * (4 * d_h + 4)
                 + qk_full * (q_grad * (4 * a * d_h + 4) + k_grad * (4 * k * d_h + 4)))
    # soft-capped attention written out keeps what each product's gradients need: q·kᵀ keeps q for k's gradient and
    # k for q's, the scores' tanh and softmax outputs where q or k needs one, the product with v the cast
    # probabilities for v's gradient (in fp32 the softmax output itself) and v for theirs
    written_out = (k_grad * a * d_h * e + q_grad * a * d_h * e
                   + scores_grad * (a * s * e + a * d_h * e) + 4 * a * s * _any(scores_grad, v_grad * (1 - cast))
                   + cast * v_grad * a * s * e)
    sdpa_kept = sdpa_grad * ((a + 2 * k) * d_h * e + a * d_h * e + 4 * a)
    attn = (grad_in * pre * norm_frozen + post_norm * mlp_grad * norm_frozen + qk_frozen
            + _lora_inputs((lq, lk, lv, lqkv), h, grad_in)
            + (1 - softcap) * sdpa_kept + softcap * written_out
            # a fused projection's q is a view of the whole q/k/v output, which stays alive when the prefix
            # concatenation gives k and v storages of their own
            + prefix * fused * sdpa_grad * 2 * k * d_h * e
            + lo * ((1 - l_drop) * (1 - (1 - softcap) * sdpa_grad) * a * d_h * e
                    + l_drop * a * d_h * (e + sdpa_grad * e_mask))
            + rank * e * (lq + lk + lv + lqkv + lo) + drop * _any(sdpa_grad, lo) * h * e_mask)
    mlp = (mlp_grad * pre * norm_frozen + post_norm * mlp_out_grad * norm_frozen + _lora_inputs((lg, lu), h, mlp_grad)
           + f * e * (gated * (2 * gate_grad + up_grad) + (1 - gated) * up_grad)
           + ldn * ((1 - l_drop) * f * e * (1 - relu * up_grad) + l_drop * f * (e + g["hidden"] * e_mask))
           + rank * e * (lg + lu + ldn) + drop * _any(mlp_grad, lg, lu, ldn) * h * e_mask)
    return attn, mlp


frozen_attn, frozen_mlp = _frozen_block(1)
first_attn, first_mlp = _frozen_block(0)
frozen_kept = define("act_layer_kept_frozen",
                     ck_none * (frozen_attn + frozen_mlp - shared) + ck_sel * (frozen_attn + h * e - shared)
                     + ck_full * h * e,
                     "per token, one block of a frozen base (not the first), as kept for backward", "B")
first_kept = define("act_first_layer_kept_frozen",
                    ck_none * (first_attn + first_mlp) + ck_sel * (first_attn + _any(_grads(0)["mlp"], lg, lu, ldn)
                                                                   * h * e) + ck_full * h * e,
                    "per token, the first block of a frozen base, whose input needs no gradient", "B")
# every block but the first has its input's gradient; the first's q/k (RoPE) and SDPA keep anything only if
# adapted there (a checkpointed block keeps its arguments: tables and mask)
deep = sp.Min(L - 1, 1)
rope_kept = 1 - adapter * (1 - ck_full) * (1 - _any(deep, lq, lk, lqkv))
mask_kept = 1 - adapter * (1 - ck_full) * (1 - _any(deep, lq, lk, lv, lqkv, prefix))
act_embed = define("act_embedding", (1 - adapter) * (8 + drop * h * e_mask),
                   "per token: int64 ids (+ dropout mask); nothing for a frozen embedding", "B")
vocab_saved = (1 - vh) * (4 * V + logit_cap * V * e)
act_head = define("act_head", (1 - adapter) * norm_saved + adapter * norm_frozen
                  + h * e * (1 - adapter * (1 - vh)) + (1 - vh) * 8 + vocab_saved + resp_mask,
                  "per token: final norm, the head's input (unless the LM head is frozen), and for an LM the fp32 "
                  "log-softmax and int64 targets (+ the soft-capped logits' tanh, DPO's bool response mask)", "B")
# RoPE's cos and sin are views of the model's tables; under document masking they are gathered per position
tables = rope * rope_kept * 2 * ((1 - doc_mask) * P + doc_mask * b * s_local) * d_rot * (1 + local_rope) * e
act_tables = define("act_tables", tables + (1 - adapter) * learned * 8 * s_local
                    + mask_kept * (1 - softcap * (1 - ck_full)) * (masked + chunk_masked) * s_local * s * e
                    + doc_mask * b * s_local * s * e
                    + prefix * s * (s + n_v) * e,
                    "once per micro-batch: RoPE cos/sin tables (a second pair for local layers' base; gathered per "
                    "position under document masking; or position ids), the sliding-window, chunk, document or "
                    "prefix mask SDPA keeps (soft-capped attention adds its "
                    "masks to the scores and keeps none, but a fully checkpointed block keeps its arguments)", "B")
# Without sequence parallelism, tensor-parallel ranks hold the activations outside the split matmuls whole.
t_whole = 1 + sp_on * (t - 1)
layers_kept = ((1 - adapter) * L_here * ((act_kept - act_kept_split) / t_whole + act_kept_split / t)
               + adapter * ((L_here - 1) * frozen_kept + first_kept))
# 1F1B holds p − rank micro-batches until the stage's first backward; interleaved 1F1B warms up
# 2(p − rank − 1) + (v − 1)·p chunk micro-batches and holds one more in steady state (Megatron-LM's schedule; the
# first stage's p + (p − 1)/v is Korthikanti et al. 2022, §4.2.3). In whole-stage units, never more than m.
interleaved = sp.Min(v - 1, 1)
inflight = define("inflight", sp.Min(m, (1 - interleaved) * (p - rank_pp)
                                     + interleaved * (2 * (p - rank_pp - 1) + (v - 1) * p + 1) / v),
                  "micro-batches whose block activations this stage holds at once", "")
# The head's (and the loss's) micro-batches go backward as soon as they are forward: one in flight on the last
# stage (its last chunk, interleaved), whatever the blocks before it hold.
acts = define("memory_activations",
              inflight * b * s_local * (layers_kept + first * act_embed / t_whole)
              + last * b * s_local * ((act_head - vocab_saved) / t_whole + vocab_saved / t)
              + inflight * prefix * (ck_none + ck_sel) * L_here * b * n_v * 2 * k * d_h * e
              + first * act_tables + last * loss_saved,
              "saved for backward by the micro-batches in flight (1F1B: p on the first stage; the head and the "
              "loss's fp32 total weight: one); heads, MLP width and vocabulary split t ways, the rest too under "
              "sequence parallelism; a GPU holds its 1/cp of each sequence's positions", "B")

# ---- memory: buffers and peak ------------------------------------------------------------------------------
group("Memory: transient buffers and peak", "peak is a timeline: states + saved activations + the largest "
      "transient (logits or a recomputed block) + communication buckets")
buf_logits = define("buffer_logits", last * b * s_local * V * (2 * e + 4) / t,
                    "logits alive with their fp32 and output-dtype gradients", "B")
rebuilt_split = ck_full * (act_attn_split + act_mlp_split) + ck_sel * act_mlp_split
buf_recompute = define("buffer_recompute",
                       b * s_local * ((ck_full * act_layer + ck_sel * (act_mlp - norm_saved) - rebuilt_split) / t_whole
                                + rebuilt_split / t),
                       "one block's activations rebuilt during backward", "B")
buf_zero = define("buffer_zero", z12 * sp.Min(reduce_bucket, psi) * g_bucket * (1 + overlap)
                  + z3 * (sp.Min(prefetch_bucket, psi) * w_bytes
                          + sp.Min(reduce_bucket, psi) * g_bucket),
                  "DeepSpeed reduce buckets (ZeRO-1/2, doubled with overlap_comm); ZeRO-3 prefetch + reduce", "B")
buf_cp = define("buffer_context", sp.Min(cp - 1, 1) * 2 * 2 * b * s_local * k * d_h * e / t,
                "ring attention: the next chunk's keys and values arriving while the current ones are used (double "
                "buffered)", "B")
bufs = define("memory_buffers", sp.Max(buf_logits, buf_recompute) + buf_zero + buf_cp, "transients at the peak",
              "B")
# FP8 (Transformer Engine): the 16-bit weights, fp32 master and optimizer stay; each block's weights are also kept
# cast to FP8 between micro-batches (1 byte each; ZeRO-3 casts the gathered layer instead). torchao casts at each
# use (a transient of one layer).
fp8_weights = define("memory_fp8_weights", te * (1 - z3) * L_here * layer / t,
                     "FP8 copies of this stage's block weights (1 byte per parameter)", "B")
define("memory_peak", states + acts + bufs + fp8_weights, "peak allocated bytes on this GPU", "B")

# ---- host memory (DeepSpeed's estimators, per node, with their 1.5 buffer factor) ---------------------------
group("Host memory per node", "deepspeed.runtime.zero.stage_1_and_2 / stage3 estimators (zero_init=True)")
define("host_zero2_offload", psi * sp.Max(4 * n_gpu, 16) * sp.Rational(3, 2), "ZeRO-1/2 + optimizer offload", "B")
define("host_zero2", psi * 4 * gpn * sp.Rational(3, 2), "ZeRO-0/1/2: fp32 model load per process", "B")
# DeepSpeed's ZeRO-3 offload estimators divide the model's parameters by the nodes: each node's GPUs hold 1/nodes
# of the ZeRO-3 shards under pure data parallelism. Under tensor, pipeline or context parallelism a node's share is
# its GPUs' shards, gpus_per_node · psi / dp (the same figure without model parallelism).
define("host_zero3_offload_all", psi * gpn / dp * 18 * sp.Rational(3, 2),
       "ZeRO-3 + optimizer + params offload: the node's GPUs' shards", "B")
define("host_zero3_offload", psi * gpn / dp * 16 * sp.Rational(3, 2), "ZeRO-3 + optimizer offload: the node's GPUs' "
       "shards", "B")
define("host_zero3", P_L * 4 * gpn * sp.Rational(3, 2), "ZeRO-3 without offload", "B")

