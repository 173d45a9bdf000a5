"""The formulas' input symbols, their docs, and the flags a frozen block's gradients follow."""

from __future__ import annotations

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
# the 2026 families' structure (llmspec.spec.architecture): norms per block, QK-norm, layers per attention kind
n_norm = sp.Symbol("norms_per_block", positive=True)
qk_head, qk_full = _s("qk_norm_head qk_norm_full", nonnegative=True)
L_sl, L_ch = _s("L_sliding L_chunked", nonnegative=True)
chunk = sp.Symbol("chunk", positive=True)
post_norm, par_res, softcap, logit_cap, local_rope, chunk_masked = _s(
    "post_norm parallel_residual softcap final_softcap local_rope chunk_masked", nonnegative=True)
d_rot = sp.Symbol("rotary_dim", nonnegative=True)
doc_mask = sp.Symbol("document_masking", nonnegative=True)
doc_keys = sp.Symbol("document_keys", positive=True)


def _any(*flags: sp.Expr) -> sp.Expr:
    """1 if any 0/1 flag is 1."""
    return 1 - sp.Mul(*(1 - flag for flag in flags))


def _grads(grad_in: sp.Expr) -> dict[str, sp.Expr]:
    """Which tensors of a frozen block need a gradient, given its input's (1 or 0): what an adapted linear or
    prefix makes trainable downstream. Keys: sdpa (attention's q/k/v/output), mlp (the MLP's input), gate, up
    (their outputs), hidden (down_proj's input)."""
    sdpa = _any(grad_in, lq, lk, lv, lqkv, prefix)
    # a parallel residual's MLP reads the block input; otherwise the residual after attention
    mlp = par_res * grad_in + (1 - par_res) * _any(sdpa, lo)
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
    "norms_per_block": "norms in each block: 2 (pre or post placement), 4 (sandwich: Gemma 2, 3)",
    "qk_norm_head": "1 when an RMSNorm of head_dim weights normalises each query and key head (Qwen3, Gemma 3)",
    "qk_norm_full": "1 when RMSNorms normalise the whole q and k projections (OLMo 2)",
    "L_sliding": "layers attending to a sliding window (layer_types; every layer where only sliding_window is set)",
    "L_chunked": "layers attending within their chunk (layer_types chunked)",
    "chunk": "attention_chunk_size (else s)",
    "post_norm": "1 when a norm follows each sub-block's output (norm_placement post or sandwich)",
    "parallel_residual": "1 when attention and the MLP both read the block's input (GPT-NeoX, Pythia)",
    "softcap": "1 when attention scores are soft-capped (Gemma 2): attention written out, its scores materialised",
    "final_softcap": "1 when the logits are soft-capped (Gemma 2)",
    "rotary_dim": "dims of each head RoPE rotates (0 when no layer rotates)",
    "local_rope": "1 when sliding or chunked layers rotate with a RoPE base of their own (Gemma 3): a second pair "
    "of tables",
    "document_masking": "1 when attention stays within each document of a packed row (data.document_masking): a "
    "(b, 1, s, s) mask through SDPA, RoPE tables gathered per position",
    "document_keys": "keys a query attends to on average under document masking: (s + 1)/2, causal attention's, "
    "an upper bound (exact from the documents' lengths: llmspec.data.attention.mean_attended_keys)",
    "chunk_masked": "1 if the attention chunk is shorter than the sequence (an explicit attention mask)",
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


