"""Every planner formula, written once in sympy.

``FORMULAS`` maps a name to an expression over input symbols and earlier formulas (referenced by name, so
``llmspec explain`` can print the compact form and the fully expanded one). ``llmspec.planner.codegen`` compiles
them into ``llmspec/planner/numeric.py``, plain Python the planner imports without sympy; a test keeps the two in sync.

Notation (the shared references'): b micro-batch, s sequence length, h d_model, a heads, k kv-heads, d_h head
dim, f d_ff, V vocab, L layers, t tensor, p pipeline, d data-parallel degree, m micro-batches per step.
Flags are 0/1 inputs. Sources are cited next to each group; activation terms are per saved tensor, as measured
on the compiled model with saved-tensor hooks (torch 2.13, SDPA flash path, composite RMSNorm).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp


def _s(names: str, **assumptions) -> tuple[sp.Symbol, ...]:
    return sp.symbols(names, **assumptions)


# ---- inputs ------------------------------------------------------------------------------------------------
V, h, L, a, k, d_h, f, P, E, K = _s("V h L a k d_h f P E K", positive=True)
cf = sp.Symbol("capacity", positive=True)
kept = sp.Min(1, cf)  # of the routed tokens, those an expert computes (all of them under balanced routing, c ≥ 1)
tied, learned, rope, bias, qkvb, gated, relu, moe, ln, drop, fused = _s(
    "tied learned rope bias qkv_bias gated relu moe layernorm dropout fused_qkv", nonnegative=True)
b, s, B, D, e, window = _s("b s B D e window", positive=True)
masked = sp.Symbol("masked", nonnegative=True)
e_stat, e_mask = _s("e_stat e_mask", positive=True)
t, p, dp, m, v, n_gpu = _s("t p dp m v n_gpu", positive=True)
sp_on = sp.Symbol("sequence_parallel", nonnegative=True)
tp_ov = sp.Symbol("tp_comm_overlap", nonnegative=True)
ep_ov = sp.Symbol("ep_comm_overlap", nonnegative=True)
ep, bw_ep = _s("ep bw_ep", positive=True)
cp, bw_cp = _s("cp bw_cp", positive=True)
s_local = s / cp  # a micro-batch's positions on this GPU: context parallelism splits every sequence
ck_none, ck_sel, ck_full = _s("ck_none ck_selective ck_full", nonnegative=True)
psi, P_L, L_here = _s("psi P_L L_here", positive=True)
rank_pp = sp.Symbol("rank", nonnegative=True)
L_max, L_last = _s("L_max L_last", nonnegative=True)
first, last, z12, z3, overlap = _s("first_stage last_stage zero12 zero3 overlap_comm", nonnegative=True)
w_bpp, g_bpp, o_bpp, g_bucket, g_comm = _s("w_bpp g_bpp o_bpp g_bucket g_comm", nonnegative=True)
reduce_bucket, prefetch_bucket = _s("reduce_bucket prefetch_bucket", positive=True)
F_peak, eff, bw_dp, bw_tp, bw_pp, steps, price = _s("F_peak eff bw_dp bw_tp bw_pp steps price", positive=True)
F_mm = sp.Symbol("F_matmul", positive=True)
te = sp.Symbol("fp8_saved", nonnegative=True)
z01, z2 = _s("zero01 zero2", nonnegative=True)
gpn = sp.Symbol("gpus_per_node", positive=True)
offload, bw_host, adam_rate, shard = _s("offload bw_host cpu_adam_rate shard", positive=True)
w_bytes = sp.Symbol("w_bytes", positive=True)
# post-training: the adapter, LoRA targets, the trained model's head and objective, the frozen weights' storage
adapter, rank, l_drop, prefix, n_v, vh, resp_mask = _s(
    "adapter r lora_dropout prefix n_virtual value_head response_mask", nonnegative=True)
lq, lk, lv, lqkv, lo, lg, lu, ldn = _s("lora_q lora_k lora_v lora_qkv lora_o lora_gate lora_up lora_down",
                                       nonnegative=True)
q_nf4, q_int8, dq, w_frozen, ref_copy, ref_fwd, ref_step, loss_saved = _s(
    "nf4 int8 double_quant w_frozen reference_copy reference_forward reference_in_step loss_saved", nonnegative=True)

causal = sp.Symbol("causal", nonnegative=True)


def _any(*flags: sp.Expr) -> sp.Expr:
    """1 if any 0/1 flag is 1."""
    return 1 - sp.Mul(*(1 - flag for flag in flags))


def _grads(grad_in: sp.Expr) -> dict[str, sp.Expr]:
    """Which tensors of a frozen block need a gradient, given its input's (1 or 0): what an adapted linear or
    prefix makes trainable downstream. Keys: sdpa (attention's q/k/v/output), mlp (the MLP's input), gate, up
    (their outputs), hidden (down_proj's input)."""
    sdpa = _any(grad_in, lq, lk, lv, lqkv, prefix)
    mlp = _any(sdpa, lo)
    gate, up = _any(mlp, lg), _any(mlp, lu)
    return {"in": grad_in, "sdpa": sdpa, "mlp": mlp, "gate": gate, "up": up,
            "hidden": gated * _any(gate, up) + (1 - gated) * up}


# (LoRA flag, d_in, d_out, which input's gradient) of each linear LoRA can adapt in a block
_ADAPTABLE = ((lq, h, a * d_h, "in"), (lk, h, k * d_h, "in"), (lv, h, k * d_h, "in"),
              (lqkv, h, (a + 2 * k) * d_h, "in"), (lo, a * d_h, h, "sdpa"), (lg, h, f, "mlp"), (lu, h, f, "mlp"),
              (ldn, f, h, "hidden"))


INPUT_DOCS: dict[str, str] = {
    "V": "vocabulary size", "h": "d_model", "L": "layers", "a": "attention heads", "k": "key/value heads",
    "d_h": "head dim", "f": "MLP hidden size d_ff", "P": "max_seq_len (learned position table, RoPE tables)",
    "E": "experts per MoE layer (1 when dense)", "K": "experts active per token, top_k (1 when dense)",
    "capacity": "expert rows computed in training per routed token: the capacity factor (each expert a fixed "
    "⌈c·tokens·K/E⌉ rows, padded; under balanced routing c < 1 drops, c > 1 pads), 1 when dropless",
    "tied": "1 if the LM head shares the embedding", "learned": "1 for learned positions", "rope": "1 for RoPE",
    "fused_qkv": "1 when q, k and v are one projection (GPT-2's c_attn), 0 for three (Llama's q/k/v_proj)",
    "bias": "1 if linear layers (and LayerNorms) have biases", "qkv_bias": "1 if q, k, v have biases",
    "gated": "1 for SwiGLU/GeGLU", "relu": "1 for ReLU", "moe": "1 for a mixture of experts",
    "layernorm": "1 for LayerNorm, 0 for RMSNorm", "dropout": "1 if dropout > 0",
    "b": "micro-batch size (sequences)", "s": "sequence length", "B": "global batch (sequences per step)",
    "D": "training tokens", "e": "activation bytes per element (2 for bf16/fp16, 4 for fp32)",
    "window": "attention window (sliding_window, else s)", "t": "tensor-parallel degree",
    "sequence_parallel": "1 if tensor-parallel ranks also split the sequence outside attention and the MLP "
    "(Megatron's sequence parallelism), 0 if they hold those activations whole",
    "tp_comm_overlap": "1 if tensor-parallel collectives are split into chunks pipelined with the matmuls they "
    "feed (Transformer Engine's userbuffers, Megatron-LM's --tp-comm-overlap)",
    "ep_comm_overlap": "1 if one micro-batch's expert all-to-all runs under another's compute (Megatron-Core's "
    "--overlap-moe-expert-parallel-comm, DeepSeek-V3's DualPipe)",
    "e_stat": "bytes per LayerNorm mean/rstd element: 4 (fp32) on GPUs; the activation dtype's on CPU",
    "e_mask": "bytes per dropout-mask element: 1 (bool, fused kernel) on GPUs; the activation dtype's on CPU",
    "masked": "1 if the sliding window is shorter than the sequence (an explicit attention mask)",
    "p": "pipeline-parallel degree", "cp": "context-parallel degree (GPUs sharing each sequence)",
    "bw_cp": "bandwidth of the context-parallel ring [B/s]",
    "dp": "ranks holding the same weights, over which ZeRO shards and gradients reduce: data × context parallel",
    "m": "micro-batches per step per replica",
    "v": "virtual pipeline stages", "n_gpu": "GPUs", "ck_none": "1 without activation checkpointing",
    "ck_selective": "1 for selective checkpointing (MLP recomputed)", "ck_full": "1 for full checkpointing",
    "psi": "parameters held by this GPU's model shard", "P_L": "parameters of the largest single module",
    "L_here": "layers on this pipeline stage",
    "rank": "this pipeline stage's index (0: the first)",
    "L_max": "blocks on the fullest pipeline stage other than the last (0 without a pipeline)",
    "L_last": "blocks on the last pipeline stage (the whole model without a pipeline)",
    "first_stage": "1 on the stage holding the embedding", "last_stage": "1 on the stage holding the LM head",
    "zero01": "1 for ZeRO stage 0 or 1", "zero2": "1 for ZeRO stage 2", "zero12": "1 for ZeRO stage 1 or 2",
    "zero3": "1 for ZeRO stage 3", "overlap_comm": "1 if DeepSpeed overlaps reduction with backward",
    "w_bpp": "weight bytes per parameter on this GPU (regime, ZeRO, offload)",
    "g_bpp": "gradient bytes per parameter on this GPU", "o_bpp": "optimizer bytes per parameter on this GPU",
    "g_bucket": "bytes per gradient element in communication buckets",
    "g_comm": "bytes per gradient element the data-parallel reduction sends (4 where gradients are fp32: the "
    "megatron regime)",
    "reduce_bucket": "reduce_bucket_size (elements)", "prefetch_bucket": "stage3_prefetch_bucket_size (elements)",
    "F_peak": "dense peak FLOP/s of one GPU at the training precision (16-bit under fp8)",
    "eff": "achieved fraction of peak",
    "F_matmul": "dense peak FLOP/s of the matmuls: F_peak, or the GPU's FP8 peak under training.precision fp8",
    "fp8_saved": "1 when linears save their inputs in FP8 and keep FP8 weight copies (fp8 with Transformer "
    "Engine; torchao's Float8Linear saves the 16-bit input and casts weights at each use)",
    "bw_dp": "bytes/s per GPU on the data-parallel links", "bw_tp": "bytes/s per GPU on tensor-parallel links",
    "ep": "expert-parallel degree (experts of each MoE layer split over ep data-parallel ranks)",
    "bw_ep": "bytes/s per GPU on expert-parallel links (all-to-all)",
    "bw_pp": "bytes/s per GPU between pipeline stages", "steps": "optimizer steps", "price": "USD per GPU-hour",
    "gpus_per_node": "GPUs per node", "offload": "1 with optimizer offload",
    "bw_host": "bytes/s per GPU to the offload target (PCIe to host memory, or NVMe)",
    "cpu_adam_rate": "parameters/s one node's CPUs update (DeepSpeedCPUAdam)",
    "shard": "divisor of the optimizer partition (data-parallel degree under ZeRO ≥ 1)",
    "w_bytes": "bytes per weight element (2 or 4)",
    "context": "tokens per sequence (prompt + generated)", "batch": "sequences decoded together",
    "kv_bytes": "bytes per KV-cache element", "usable": "usable bytes of one GPU",
    "hbm_bandwidth": "bytes/s of one GPU's memory", "F_fwd": "forward FLOPs per token at this context",
    "compute": "training FLOPs to spend (C)",
    "adapter": "1 when the base is frozen under an adapter (LoRA or prefix), 0 for full fine-tuning and pretraining",
    "r": "LoRA rank", "lora_dropout": "1 if LoRA's input dropout > 0", "prefix": "1 for prefix tuning",
    "n_virtual": "prefix tuning's virtual tokens per layer",
    "lora_q": "1 if LoRA adapts q_proj (likewise lora_k, lora_v, lora_qkv, lora_o, lora_gate, lora_up, lora_down)",
    "lora_k": "1 if LoRA adapts k_proj", "lora_v": "1 if LoRA adapts v_proj",
    "lora_qkv": "1 if LoRA adapts the fused qkv_proj", "lora_o": "1 if LoRA adapts o_proj",
    "lora_gate": "1 if LoRA adapts gate_proj", "lora_up": "1 if LoRA adapts up_proj",
    "lora_down": "1 if LoRA adapts down_proj",
    "value_head": "1 when a scalar value head replaces the LM head (reward models)",
    "response_mask": "1 when a pairwise loss compares sequence log-probabilities, summed under a bool response "
    "mask saved per token (DPO)",
    "nf4": "1 if the frozen block linears are stored in NF4", "int8": "1 if they are stored in int8",
    "double_quant": "1 with NF4 double quantisation",
    "w_frozen": "bytes per frozen weight element that is not quantised",
    "reference_copy": "1 when DPO/PPO keep a frozen copy of the starting model as the reference",
    "causal": "1 to count causal attention (the keys each query sees); 0 to count every key, as FlopCounterMode "
    "does (llmspec measure)",
    "reference_forward": "1 when DPO, PPO or GRPO run a reference model (not precomputed log-probs)",
    "reference_in_step": "1 when the reference's forward runs in each training step (DPO, GRPO); PPO's runs in "
    "scoring",
    "rollouts_per_gpu": "PPO/GRPO: sequences this GPU generates per step (rollouts_per_step / dp)",
    "prompt_len": "PPO/GRPO: prompt tokens per rollout", "response_len": "PPO/GRPO: generated tokens per rollout",
    "rollouts_per_step": "PPO/GRPO: sequences generated per step, over every GPU",
    "epochs": "PPO/GRPO: passes over each step's rollouts",
    "trains_critic": "1 when a critic trains beside the policy (PPO)",
    "reward_model": "1 when a reward model scores the rollouts (0: the verifier, no model)",
    "score_policy": "1 when scoring runs the policy (old log-probabilities) and the reference, whose forward is not "
    "in the training step (PPO)",
    "critic_X": "PPO: the critic's X (memory_weights, time_step, flops_per_step, …), its training formulas "
    "evaluated as the policy's are; 0 without a critic",
    "reward_bytes_frozen_model": "the reward model's bytes_frozen_model (0 without one)",
    "reward_flops_per_token_forward": "the reward model's flops_per_token_forward (0 without one)",
    "loss_saved": "bytes the objective saves per micro-batch after the last position-wise tensor (cross-entropy's "
    "fp32 total weight; the pairwise losses' per-pair terms; the RL losses' per-token and per-sequence terms)",
}


@dataclass(frozen=True)
class Formula:
    name: str
    expr: sp.Expr
    doc: str
    unit: str
    group: str
    source: str = ""
    # compiled with its operations in the order written (sympy's canonical order otherwise): floating-point sums
    # and products round by their order, and the RL step's totals keep the order that pinned the plans
    ordered: bool = False

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, positive=True)


FORMULAS: dict[str, Formula] = {}
_GROUP = ""
_SOURCE = ""


def group(name: str, source: str = "") -> None:
    global _GROUP, _SOURCE
    _GROUP, _SOURCE = name, source


def define(name: str, expr: sp.Expr, doc: str, unit: str, ordered: bool = False) -> sp.Symbol:
    """Register a formula; returns the symbol later formulas use to refer to it. ``ordered``: ``expr`` is built
    unevaluated (``_add``, ``_mul``, ``_div``) and compiled in the order written."""
    assert name not in FORMULAS, name
    FORMULAS[name] = Formula(name, sp.sympify(expr), doc, unit, _GROUP, _SOURCE, ordered)
    return FORMULAS[name].symbol


def _f(name: str) -> sp.Symbol:
    """An earlier formula's symbol, by name."""
    return FORMULAS[name].symbol


def _add(*terms: sp.Expr) -> sp.Expr:
    """terms[0] + terms[1] + …, added left to right as written."""
    return sp.Add(*terms, evaluate=False)


def _mul(*factors: sp.Expr) -> sp.Expr:
    """factors[0] · factors[1] · …, multiplied left to right as written."""
    return sp.Mul(*factors, evaluate=False)


def _div(numerator: sp.Expr, denominator: sp.Expr) -> sp.Expr:
    return sp.Mul(numerator, sp.Pow(denominator, -1, evaluate=False), evaluate=False)


# ---- parameters --------------------------------------------------------------------------------------------
group("Parameters", "exact; equals transformers' count for the same config (tests build GPT-2, Llama, Mistral, "
      "Mixtral, Qwen2 on the meta device)")
emb = define("params_embedding", V * h + learned * P * h, "token (+ learned position) embedding tables", "params")
attn = define("params_attention", h * (a + 2 * k) * d_h + a * d_h * h + qkvb * (a + 2 * k) * d_h + bias * h,
              "one attention block: q, k, v, o projections (+ biases)", "params")
expert = define("params_mlp", (2 + gated) * h * f + bias * ((1 + gated) * f + h),
                "one MLP (one expert under MoE): up (+ gate) and down projections (+ biases)", "params")
router = define("params_router", moe * h * E, "MoE router (no bias)", "params")
norm = define("params_norm", h * (1 + ln * bias), "one norm: weight (+ LayerNorm bias)", "params")
layer = define("params_layer", attn + E * expert + router + 2 * norm, "one transformer block", "params")
# What DeepSpeed's AutoTP (the engine `run` uses for tensor parallelism) leaves whole on every rank; the rest of a
# stage's parameters is split t ways. It shards the q/k/v/gate/up projections by output (with their biases), o/down
# by input, and the vocabulary of the LM head (and of an embedding tied to it), but no untied embedding table.
define("params_layer_unsplit", 2 * norm + router + bias * h * (1 + E),
       "of one block, what tensor parallelism keeps whole: norms, router, the biases added after the o and down "
       "projections' all-reduce", "params")
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
define("params_norms", (2 * L + 1) * norm, "every norm: two per block and the final one", "params")

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
define("bytes_autocast_copies", 2 * (total - emb - (2 * L + 1) * norm + tied * V * h),
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


def _keys_seen(n: sp.Expr) -> sp.Expr:
    """Keys that the queries at positions 1..n see in all, each the keys up to it within the window."""
    w = sp.Min(window, n)
    return w * (w + 1) / 2 + (n - w) * w


ctx = define("attention_context", causal * _keys_seen(s) / s + (1 - causal) * s,
             "keys each query attends to, averaged over positions (causal, windowed)", "tokens")
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
# output nothing saves, is skipped unless dropout follows it (the down projection, or under LoRA its B).
skipped = (1 - moe) * (1 - drop) * 2 * L * (ldn * rank * h + (1 - ldn) * h * f)
recompute = define("flops_recompute_per_token",
                   ck_full * (fwd + fwd_capacity - 2 * (1 - vh) * V * h - 2 * vh * h - skipped)
                   + ck_sel * (2 * L * (K * cf * (2 + gated) * h * f + moe * h * E + rank * (lg + lu + ldn) * (h + f))
                               - skipped),
                   "forward recomputed in backward: every block (full) or the MLPs (selective), less the dense "
                   "down projection that early-stopping recompute skips", "FLOP")
hw = define("flops_per_token_hardware", train + recompute, "FLOPs executed per token (for HFU)", "FLOP")
define("flops_per_step", train * B * s, "model FLOPs per optimizer step", "FLOP")
define("flops_total", train * D, "model FLOPs for the whole run", "FLOP")
define("flops_6nd", 6 * active * D, "the 6·N·D rule, for comparison", "FLOP")

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
act_attn = define("act_attention", norm_saved + h * e_in + (a + 2 * k) * d_h * e + a * d_h * (e + te) + 4 * a
                  + drop * h * e_mask,
                  "per token: norm, q/k/v input, q, k, v, SDPA out (laid out (b, s, heads, d_h), so it is also the "
                  "o_proj input; its FP8 copy under Transformer Engine), fp32 log-sum-exp (+ dropout mask)", "B")
hidden_mult = 2 - relu + 2 * gated
hidden_saved = hidden_mult * e + down_extra  # bytes per hidden unit (per f)
act_mlp = define("act_mlp", norm_saved + h * (moe * e + (1 - moe) * e_in) + (1 - moe) * hidden_saved * f
                 + moe * (K * (cf * (h * e_in + h * e + hidden_saved * f) + kept * (h * e + e) + 16) + 4 * E + 12 * K
                          + 4)
                 + drop * h * e_mask,
                 "per token: norm, MLP input, hidden tensors (GELU 2f, ReLU f, SwiGLU/GeGLU 4f; the down projection's "
                 "input in FP8 under Transformer Engine); MoE: fp32 router "
                 "probabilities, top-k indices (int64) and weights with their sum; per expert row computed the "
                 "gathered input, hidden tensors and expert output, per routed token kept its weighted output and "
                 "weight, per routed token its (token, slot) indices (the kept ones view them all)", "B")
act_layer = define("act_layer", act_attn + act_mlp, "per token, one block, nothing recomputed", "B")
act_attn_split = define("act_attention_split", (a + 2 * k) * d_h * e + a * d_h * (e + te) + 4 * a,
                        "of act_attention, what tensor parallelism splits by heads: q, k, v, SDPA out, "
                        "log-sum-exp", "B")
act_mlp_split = define("act_mlp_split", K * cf * hidden_saved * f,
                       "of act_mlp, the hidden tensors tensor parallelism splits by width", "B")
act_kept = define("act_layer_kept", ck_none * act_layer + ck_sel * (act_attn + h * e) + ck_full * h * e,
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
    attn = (grad_in * norm_frozen + _lora_inputs((lq, lk, lv, lqkv), h, grad_in)
            + sdpa_grad * ((a + 2 * k) * d_h * e + a * d_h * e + 4 * a)
            # a fused projection's q is a view of the whole q/k/v output, which stays alive when the prefix
            # concatenation gives k and v storages of their own
            + prefix * fused * sdpa_grad * 2 * k * d_h * e
            + lo * ((1 - l_drop) * (1 - sdpa_grad) * a * d_h * e + l_drop * a * d_h * (e + sdpa_grad * e_mask))
            + rank * e * (lq + lk + lv + lqkv + lo) + drop * _any(sdpa_grad, lo) * h * e_mask)
    mlp = (mlp_grad * norm_frozen + _lora_inputs((lg, lu), h, mlp_grad)
           + f * e * (gated * (2 * gate_grad + up_grad) + (1 - gated) * up_grad)
           + ldn * ((1 - l_drop) * f * e * (1 - relu * up_grad) + l_drop * f * (e + g["hidden"] * e_mask))
           + rank * e * (lg + lu + ldn) + drop * _any(mlp_grad, lg, lu, ldn) * h * e_mask)
    return attn, mlp


frozen_attn, frozen_mlp = _frozen_block(1)
first_attn, first_mlp = _frozen_block(0)
frozen_kept = define("act_layer_kept_frozen",
                     ck_none * (frozen_attn + frozen_mlp) + ck_sel * (frozen_attn + h * e) + ck_full * h * e,
                     "per token, one block of a frozen base (not the first), as kept for backward", "B")
first_kept = define("act_first_layer_kept_frozen",
                    ck_none * (first_attn + first_mlp) + ck_sel * (first_attn + h * e) + ck_full * h * e,
                    "per token, the first block of a frozen base, whose input needs no gradient", "B")
# every block but the first has its input's gradient; the first's q/k (RoPE) and SDPA keep anything only if
# adapted there (a checkpointed block keeps its arguments: tables and mask)
deep = sp.Min(L - 1, 1)
rope_kept = 1 - adapter * (1 - ck_full) * (1 - _any(deep, lq, lk, lqkv))
mask_kept = 1 - adapter * (1 - ck_full) * (1 - _any(deep, lq, lk, lv, lqkv, prefix))
act_embed = define("act_embedding", (1 - adapter) * (8 + drop * h * e_mask),
                   "per token: int64 ids (+ dropout mask); nothing for a frozen embedding", "B")
act_head = define("act_head", (1 - adapter) * norm_saved + adapter * norm_frozen
                  + h * e * (1 - adapter * (1 - vh)) + (1 - vh) * (4 * V + 8) + resp_mask,
                  "per token: final norm, the head's input (unless the LM head is frozen), and for an LM the fp32 "
                  "log-softmax and int64 targets (+ DPO's bool response mask)", "B")
act_tables = define("act_tables", rope * rope_kept * 2 * P * d_h * e + (1 - adapter) * learned * 8 * s_local
                    + mask_kept * masked * s_local * s * e + prefix * s * (s + n_v) * e,
                    "once per micro-batch: RoPE cos/sin tables (or position ids), the sliding-window or prefix "
                    "mask", "B")
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
              + last * b * s_local * ((act_head - 4 * V) / t_whole + 4 * V / t)
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

# ---- time and cost -----------------------------------------------------------------------------------------
group("Time and cost", "compute at a calibrated fraction of peak + exposed communication (ring collectives: "
      "(d-1)/d of the bytes each way) + pipeline bubble (p-1)/(v·m) of the slowest stage's time (Narayanan et al. "
      "2021)")
# attention (QKᵀ, AV: forward, backward 2×, recomputed under full checkpointing) runs at the 16-bit rate; the rest
# is matmuls, at F_matmul (the FP8 rate under fp8)
att_exec = (3 + ck_full) * fwd_attn
t_compute = define("time_compute", ((hw - att_exec) / F_mm + att_exec / F_peak) * B * s / (n_gpu * eff),
                   "seconds of math per step", "s")
# A pipeline runs at its slowest stage's pace: blocks split unevenly, and the LM head (forward and backward, never
# recomputed) rides on the last stage. Pipelines train from scratch, so the head is the LM head.
head_hw = 6 * V * h
block_hw = (hw - head_hw) / L
imbalance = define("pipeline_imbalance", sp.Max(L_max * block_hw, L_last * block_hw + head_hw) * p / hw,
                   "the slowest pipeline stage's FLOPs over the mean stage's (1 without a pipeline)", "")
t_imbalance = define("time_imbalance", (imbalance - 1) * t_compute,
                     "stages waiting for the slowest one (uneven blocks, the LM head on the last stage)", "s")
fullest = sp.Max(L_max, L_last)
chunk = define("chunk_share", sp.ceiling(fullest / v) / fullest,
               "the largest interleaved chunk's share of the fullest stage (1/v when v divides its blocks)", "")
t_bubble = define("time_bubble", (p - 1) / m * chunk * imbalance * t_compute,
                  "pipeline fill and drain: p − 1 of the largest chunk's forward and backward, at the slowest "
                  "stage's pace ((p − 1)/(v·m) of a step's compute when v divides the blocks)", "s")
dp_bytes = define("comm_dp_bytes", (dp - 1) / dp * psi * (z01 * 2 * g_comm + z2 * (m * g_comm + 2)
                                                           + z3 * m * (4 + g_comm)),
                  "bytes each GPU sends per step for data parallelism: all-reduce (ZeRO-0/1), reduce-scatter per "
                  "micro-batch + weight all-gather (ZeRO-2), two all-gathers + reduce-scatter per micro-batch "
                  "(ZeRO-3)", "B")
window_dp = (z01 * sp.Rational(2, 3) / m + z2 * sp.Rational(2, 3) + z3) * t_compute * overlap
t_dp = define("time_dp_exposed", sp.Max(0, dp_bytes / bw_dp - window_dp),
              "data-parallel traffic not hidden behind backward compute", "s")
t_tp_all = define("time_tp_collectives",
                  (8 + 4 * ck_full) * L_here * (t - 1) / t * b * s_local * h * e * m / bw_tp,
                  "tensor-parallel collectives: 4 per block forward, 4 backward (+4 when recomputing)", "s")
# Overlapped (Wang et al. 2023, "Overlap communication with dependent computation via decomposition"; Transformer
# Engine): each collective is split into t chunks around the ring, and each chunk's transfer runs under the
# previous chunk's matmul: the first of the t chunks has nothing to hide behind, and whatever outlasts the
# matmuls stays exposed. Without overlap (DeepSpeed AutoTP, Megatron-LM 2021) every collective waits.
t_tp = define("time_tp", (1 - tp_ov) * t_tp_all
              + tp_ov * (t_tp_all / t + sp.Max(0, t_tp_all * (t - 1) / t - t_compute)),
              "tensor-parallel collectives not hidden behind the matmuls (all of them without overlap)", "s")
t_pp = define("time_pp", (p * v - 1) / p * 2 * m * b * s_local * h * e / t / bw_pp,
              "activations and their gradients sent between stages (p·v − 1 chunk boundaries interleaved)", "s")
t_off = define("time_offload", offload * psi / shard * ((g_bucket + w_bytes) / bw_host + gpn / adam_rate),
               "optimizer offload: gradients down and weights back over PCIe, then the CPU optimizer step "
               "(ZeRO-Offload, Ren et al. 2021; not overlapped)", "s")
ep_bytes = define("comm_ep_bytes", moe * (4 + 2 * (ck_full + ck_sel)) * m * L_here * b * s_local * K * cf * h * e
                  * (ep - 1) / ep / t,
                  "bytes each GPU sends per step for expert parallelism: every expert row's hidden state (padded "
                  "to capacity) to its expert's rank and back (all-to-all dispatch and combine), forward, "
                  "backward and recompute",
                  "B")
t_ep_all = define("time_ep_all_to_all", ep_bytes / bw_ep, "expert-parallel all-to-all, dispatch and combine", "s")
# Overlapped, a micro-batch's all-to-all runs while another micro-batch computes: only what outlasts the step's
# compute is exposed, and nothing overlaps with a single micro-batch. Without (DeepSpeed AutoEP) all of it waits.
other = sp.Min(m - 1, 1)
t_ep = define("time_ep", (1 - ep_ov * other) * t_ep_all + ep_ov * other * sp.Max(0, t_ep_all - t_compute),
              "expert-parallel all-to-all not hidden behind another micro-batch's compute (all of it without "
              "overlap)", "s")
# Ring attention (Liu et al. 2023; Megatron-LM's context parallelism): every layer passes each GPU's keys and values
# around the ring of cp GPUs, forward, backward (again, with their gradients back) and recompute, while the
# attention of the chunk in hand computes: only the part of the exchange longer than that math is exposed.
cp_bytes = define("comm_cp_bytes", (3 + ck_full) * (cp - 1) * L_here * m * b * s_local * 2 * k * d_h * e / t,
                  "bytes each GPU sends per step around the context-parallel ring: its keys and values (and their "
                  "gradients) to the cp − 1 others, per layer and micro-batch", "B")
t_attention = define("time_attention", (3 + ck_full) * fwd_attn / L * L_here * m * b * s_local / (t * F_peak * eff),
                     "seconds of attention math (QKᵀ, AV) per step on this GPU, which the ring exchange hides "
                     "behind", "s")
t_cp = define("time_cp", sp.Max(0, cp_bytes / bw_cp - t_attention),
              "context-parallel key/value exchange not hidden behind attention", "s")
step = define("time_step", t_compute + t_imbalance + t_bubble + t_dp + t_tp + t_pp + t_off + t_ep + t_cp,
              "seconds per optimizer step", "s")
tps = define("tokens_per_second", B * s / step, "training throughput", "tokens/s")
secs = define("time_total", steps * step, "wall-clock for the run", "s")
gpuh = define("gpu_hours", secs * n_gpu / 3600, "GPU-hours", "GPU·h")
define("cost", gpuh * price, "USD at the GPU-hour price", "USD")
define("mfu", train * tps / (n_gpu * F_peak), "model FLOPs utilisation", "")
define("hfu", hw * tps / (n_gpu * F_peak), "hardware FLOPs utilisation (recompute counted)", "")


# ---- inference ---------------------------------------------------------------------------------------------
group("Inference", "one model replica over t tensor-parallel GPUs; decode reads every weight and the whole KV "
      "cache once per step (memory-bound), prefill is compute-bound")
ctx, bsz, kv_e, mem_usable, bw_hbm, fwd_ctx = _s("context batch kv_bytes usable hbm_bandwidth F_fwd", positive=True)
kv_token = define("kv_cache_per_token", 2 * L * k * d_h * kv_e,
                  "K and V for every layer and key/value head (GQA-aware)", "B")
inf_w = define("inference_weights", psi * w_bytes, "weights on one GPU", "B")
kv_all = define("kv_cache", bsz * ctx * kv_token / t, "the KV cache of the batch at full context, per GPU", "B")
define("inference_memory", inf_w + kv_all, "weights + KV cache per GPU", "B")
define("max_batch", sp.floor((mem_usable - inf_w) / (ctx * kv_token / t)),
       "sequences of this context whose KV cache fits next to the weights", "sequences")
decode = define("decode_step", (inf_w + kv_all) / bw_hbm, "one decode step: read weights + KV cache", "s")
define("decode_tokens_per_second", bsz / decode, "generated tokens/s for the batch (bandwidth bound)", "tokens/s")
define("prefill_seconds", bsz * ctx * fwd_ctx / (t * F_peak * eff),
       "process the prompts: forward FLOPs at this context over the GPUs' achieved peak", "s")

# ---- post-training: RL phases -------------------------------------------------------------------------------
group("Post-training: RL phases", "one PPO/GRPO step (Ouyang et al. 2022; Shao et al. 2024) generates the rollouts "
      "(prefill compute-bound; each decoded token reads every weight and the KV cache so far, Pope et al. 2022), "
      "then scores them and trains on them (the training formulas, per model); per GPU of data parallelism")
n_roll, s_p, s_r = _s("rollouts_per_gpu prompt_len response_len", positive=True)
kv_token_rl = 2 * L * k * d_h * e
kv_rl = define("rl_kv_cache", n_roll * (s_p + s_r) * kv_token_rl,
               "the rollouts' KV cache at full length on this GPU (K and V of every layer, GQA-sized), in the "
               "activation dtype", "B")
rl_gather = define("rl_gathered_policy", z3 * (1 - 1 / dp) * policy_bytes,
                   "ZeRO-3: the rest of the policy gathered whole for generation", "B")
rl_logits = n_roll * V * 4
define("rl_generation_buffers", kv_rl + rl_gather + rl_logits,
       "generation's transients: KV cache, gathered weights, the next token's fp32 logits", "B")
per_token = 2 * matmul + 2 * L * lora_layer
head = 2 * V * h
prefill_keys = causal * _keys_seen(s_p) + (1 - causal) * s_p * s_p + s_p * prefix * n_v
prefill = define("rl_prefill_flops", n_roll * (s_p * (per_token - head) + head + 4 * a * d_h * L * prefill_keys),
                 "the prompts' forward (each query sees the keys before it, within the window; prefix keys too), "
                 "logits at the last position only", "FLOP")
decode_keys = _keys_seen(s_p + s_r - 1) - _keys_seen(s_p) + (s_r - 1) * prefix * n_v
decode_flops = define("rl_decode_flops", n_roll * ((s_r - 1) * per_token + 4 * a * d_h * L * decode_keys),
                      "the other s_r - 1 tokens (prefill gave the first) one at a time for every rollout: the token "
                      "at position n attends to n keys (at most the window) and the prefix", "FLOP")
decode_bytes = define("rl_decode_bytes", s_r * policy_bytes + n_roll * kv_token_rl * decode_keys,
                      "bytes generation reads: every weight once per forward, and the KV cache so far", "B")
define("time_generation", prefill / (F_peak * eff) + sp.Max(decode_bytes / bw_hbm, decode_flops / (F_peak * eff))
       + rl_gather / bw_dp,
       "prefill at the achieved FLOP rate + decode at the slower of memory bandwidth and FLOPs (+ the ZeRO-3 "
       "gather)", "s")

# ---- post-training: the RL step -----------------------------------------------------------------------------
RL_STEP = "Post-training: RL step"
group(RL_STEP, "every model resident for the whole step, as TRL and DeepSpeed-Chat hold them (the "
      "policy and its reference, PPO's critic, a frozen reward model); the phases run one after another (Ouyang et "
      "al. 2022, Shao et al. 2024); the peak is the fullest phase's. rl_X is the step's X: what `llmspec plan` "
      "reports for a PPO/GRPO run in place of the policy's training step")
rollouts, epochs = _s("rollouts_per_step epochs", positive=True)
critic_on, reward_on, score_policy = _s("trains_critic reward_model score_policy", nonnegative=True)
reward_stored, reward_fwd = _s("reward_bytes_frozen_model reward_flops_per_token_forward", nonnegative=True)


def _plus_critic(name: str) -> sp.Expr:
    """The policy's ``name`` and, where one trains beside it, the critic's (input ``critic_<name>``)."""
    return _add(_f(name), _mul(critic_on, sp.Symbol(f"critic_{name}", nonnegative=True)))


reward_held = define("rl_memory_reward", _div(_mul(reward_on, reward_stored), frozen_held),
                     "the frozen reward model on this GPU (partitioned only under ZeRO-3)", "B", ordered=True)
for _kind in ("weights", "gradients", "optimizer", "gathered", "frozen"):
    define(f"rl_memory_{_kind}",
           _add(_plus_critic(f"memory_{_kind}"), reward_held) if _kind == "frozen" else _plus_critic(f"memory_{_kind}"),
           f"{_kind} of every model on this GPU: the policy's, the critic's"
           + (", the reward model's and the reference's" if _kind == "frozen" else ""), "B", ordered=True)
resident = define("rl_memory_resident", _add(_plus_critic("memory_model_states"), reward_held),
                  "every model's states on this GPU, held through every phase", "B", ordered=True)
define("rl_memory_model_states", sp.floor(resident), "the step's model states, whole bytes", "B")
scoring_buffer = define("rl_scoring_buffer", b * s * V * (e + 4),
                        "scoring's transient: a micro-batch's logits and their fp32 log-softmax", "B")
rl_acts = define("rl_training_activations", _plus_critic("memory_activations"),
                 "activations the training phase saves: the policy's and the critic's at once (one module, one "
                 "loss)", "B", ordered=True)
rl_bufs = define("rl_training_buffers", sp.Max(_f("memory_buffers"),
                                               _mul(critic_on, sp.Symbol("critic_memory_buffers", nonnegative=True))),
                 "the training phase's largest transient (the policy's or the critic's)", "B", ordered=True)
gen_buffers = _f("rl_generation_buffers")
mem_gen = define("rl_memory_generation", _add(resident, gen_buffers), "the generation phase's peak", "B",
                 ordered=True)
mem_scoring = define("rl_memory_scoring", _add(resident, scoring_buffer), "the scoring phase's peak", "B",
                     ordered=True)
mem_training = define("rl_memory_training", _add(resident, rl_acts, rl_bufs), "the training phase's peak", "B",
                      ordered=True)
define("rl_memory_peak", sp.Max(mem_gen, mem_scoring, mem_training), "peak allocated bytes: the fullest phase's",
       "B")
# the fullest phase's activations and transients (the first of equal phases, in the order they run)
define("rl_memory_activations", sp.Piecewise((rl_acts, mem_training > sp.Max(mem_gen, mem_scoring)), (0, True)),
       "saved activations at the peak: the training phase's where it is the fullest (none while generating or "
       "scoring)", "B")
define("rl_memory_buffers", sp.Piecewise((gen_buffers, mem_gen >= sp.Max(mem_scoring, mem_training)),
                                         (scoring_buffer, mem_scoring >= mem_training), (rl_bufs, True)),
       "transients at the peak: the fullest phase's", "B")
flops_gen = define("rl_flops_generation", _add(_f("rl_prefill_flops"), _f("rl_decode_flops")),
                   "generation's FLOPs on this GPU: prefill and decode", "FLOP", ordered=True)
flops_scoring = define("rl_flops_scoring",
                       _mul(n_roll, s, _add(_mul(critic_on, sp.Symbol("critic_flops_per_token_forward",
                                                                      nonnegative=True)),
                                            _mul(reward_on, reward_fwd), _mul(score_policy, fwd),
                                            _mul(score_policy, ref_flops))),
                       "scoring's no-grad forwards over every rollout token on this GPU: the critic's, the reward "
                       "model's, and where the step does not run them itself the policy's (old log-probabilities) "
                       "and the reference's (PPO)", "FLOP", ordered=True)
t_scoring = define("rl_time_scoring", _div(flops_scoring, _mul(F_peak, eff)),
                   "scoring at the achieved FLOP rate", "s", ordered=True)
opt_steps = define("rl_optimizer_steps", _div(_mul(epochs, rollouts), B),
                   "optimizer steps per RL step: epochs passes over the rollouts, a global batch each", "",
                   ordered=True)
t_training = define("rl_time_training", _mul(opt_steps, _plus_critic("time_step")),
                    "the training phase: that many of the policy's (and the critic's) training steps", "s",
                    ordered=True)
flops_training = define("rl_flops_training", _div(_mul(opt_steps, _plus_critic("flops_per_step")), dp),
                        "the training phase's model FLOPs on this GPU", "FLOP", ordered=True)
rl_step = define("rl_time_step", _add(_f("time_generation"), t_scoring, t_training),
                 "seconds per RL step: generation, scoring and training, one after another", "s", ordered=True)
rl_flops = define("rl_flops_per_step", _mul(dp, _add(flops_gen, flops_scoring, flops_training)),
                  "model FLOPs per RL step over every GPU: generation, scoring, training", "FLOP", ordered=True)
define("rl_flops_total", _mul(rl_flops, steps), "model FLOPs for the whole run", "FLOP", ordered=True)


def _recompute_flops(hardware: sp.Expr, model: sp.Expr) -> sp.Expr:
    return _mul(_add(hardware, -model), B, s)


rl_hardware = define(
    "rl_flops_hardware",
    _add(rl_flops, _mul(opt_steps, _add(
        _recompute_flops(hw, train),
        _mul(critic_on, _recompute_flops(*(sp.Symbol(f"critic_{name}", nonnegative=True)
                                           for name in ("flops_per_token_hardware", "flops_per_token_train"))))))),
    "FLOPs executed per RL step: the model FLOPs and the training phase's recompute", "FLOP", ordered=True)
define("rl_tokens_per_second", _div(_mul(rollouts, s), rl_step), "rollout tokens per second", "tokens/s",
       ordered=True)
rl_secs = define("rl_time_total", _mul(steps, rl_step), "wall-clock for the run", "s", ordered=True)
rl_gpuh = define("rl_gpu_hours", _div(_mul(rl_secs, n_gpu), 3600), "GPU-hours", "GPU·h", ordered=True)
define("rl_cost", _mul(rl_gpuh, price), "USD at the GPU-hour price", "USD", ordered=True)
define("rl_mfu", _div(rl_flops, _mul(rl_step, n_gpu, F_peak)),
       "model FLOPs utilisation of the RL step (generation and scoring included)", "", ordered=True)
define("rl_hfu", _div(rl_hardware, _mul(rl_step, n_gpu, F_peak)),
       "hardware FLOPs utilisation of the RL step (recompute counted)", "", ordered=True)

# ---- compute-optimal sizing --------------------------------------------------------------------------------
group("Compute-optimal sizing", "Hoffmann et al. 2022 (Chinchilla): C = 6ND, D ≈ 20N, and the approach-3 fit "
      "L(N, D) = E + A/N^α + B/D^β; Besiroglu et al. 2024 refit")
C = sp.Symbol("compute", positive=True)
n20 = define("optimal_params_20x", sp.sqrt(C / 120), "parameters with D = 20 N and C = 6 N D", "params")
define("optimal_tokens_20x", 20 * n20, "tokens, 20 per parameter", "tokens")
for key, (E0, A0, B0, alpha, beta) in {
        "chinchilla": (1.69, 406.4, 410.7, 0.34, 0.28), "refit": (1.8172, 482.01, 2085.43, 0.3478, 0.3658)}.items():
    E0, A0, B0, alpha, beta = (sp.Float(x) for x in (E0, A0, B0, alpha, beta))
    g = (alpha * A0 / (beta * B0)) ** (1 / (alpha + beta))
    n_opt = define(f"optimal_params_{key}", g * (C / 6) ** (beta / (alpha + beta)),
                   f"parameters minimising the {key} loss fit at compute C", "params")
    d_opt = define(f"optimal_tokens_{key}", C / 6 / n_opt, f"tokens at that optimum ({key} fit)", "tokens")
    define(f"optimal_loss_{key}", E0 + A0 / n_opt**alpha + B0 / d_opt**beta, f"predicted loss ({key} fit)", "nats")

@functools.cache
def expanded(name: str) -> sp.Expr:
    """A formula with every formula it refers to substituted, down to input symbols (each expanded once: the time
    formulas share most of theirs). The RL step's formulas stop at the models' own results (the policy's, like the
    critic's, which are inputs), each of which ``llmspec explain`` expands on its own."""
    formula = FORMULAS[name]
    step = formula.group == RL_STEP

    def substituted(other: str) -> bool:
        return other in FORMULAS and (not step or FORMULAS[other].group == RL_STEP)

    return formula.expr.xreplace({sym: expanded(sym.name) for sym in formula.expr.free_symbols
                                  if substituted(sym.name)})


def arguments(name: str) -> list[str]:
    """The names a formula's numeric function takes (inputs and earlier formulas), sorted."""
    return sorted(sym.name for sym in FORMULAS[name].expr.free_symbols)
