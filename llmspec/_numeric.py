"""Numeric planner formulas, GENERATED from llmspec/formulas.py by `python -m llmspec.codegen`: do not edit."""

import math


def _max(*xs):
    try:
        return max(xs)
    except (TypeError, ValueError):  # numpy arrays
        import numpy

        return numpy.maximum.reduce(numpy.broadcast_arrays(*xs))


def _min(*xs):
    try:
        return min(xs)
    except (TypeError, ValueError):
        import numpy

        return numpy.minimum.reduce(numpy.broadcast_arrays(*xs))


def _floor(x):
    try:
        return math.floor(x)
    except TypeError:
        import numpy

        return numpy.floor(x)


def params_embedding(P, V, h, learned):
    """token (+ learned position) embedding tables [params]"""
    return P*h*learned + V*h


def params_attention(a, bias, d_h, h, k, qkv_bias):
    """one attention block: q, k, v, o projections (+ biases) [params]"""
    return a*d_h*h + bias*h + d_h*h*(a + 2*k) + d_h*qkv_bias*(a + 2*k)


def params_mlp(bias, f, gated, h):
    """one MLP (one expert under MoE): up (+ gate) and down projections (+ biases) [params]"""
    return bias*(f*(gated + 1) + h) + f*h*(gated + 2)


def params_router(E, h, moe):
    """MoE router (no bias) [params]"""
    return E*h*moe


def params_norm(bias, h, layernorm):
    """one norm: weight (+ LayerNorm bias) [params]"""
    return h*(bias*layernorm + 1)


def params_layer(E, params_attention, params_mlp, params_norm, params_router):
    """one transformer block [params]"""
    return E*params_mlp + params_attention + 2*params_norm + params_router


def params_lm_head(V, h, tied):
    """LM head (0 when tied to the embedding) [params]"""
    return V*h*(1 - tied)


def params_total(L, params_embedding, params_layer, params_lm_head, params_norm):
    """all parameters (shared ones once) [params]"""
    return L*params_layer + params_embedding + params_lm_head + params_norm


def params_non_embedding(params_embedding, params_total):
    """total minus embedding tables (the LM head stays in) [params]"""
    return -params_embedding + params_total


def params_largest_module(E, P, V, a, bias, d_h, f, h, k, learned, moe, qkv_bias, rope):
    """the largest single module (embedding, LM head, a projection): what ZeRO-3 gathers at once [params]"""
    return _max(V*h, E*h*moe, P*h*learned, bias*f + f*h, bias*h + f*h, a*d_h*rope*(h + qkv_bias) + d_h*learned*(a + 2*k)*(h + qkv_bias))


def params_active(E, K, L, params_mlp, params_total):
    """parameters used per token (MoE: top_k experts) [params]"""
    return -L*params_mlp*(E - K) + params_total


def matmul_weights(E, K, L, V, a, d_h, f, gated, h, k, moe):
    """weights multiplied per token (the LM head even when tied; embeddings are lookups) [params]"""
    return L*(E*h*moe + K*f*h*(gated + 2) + a*d_h*h + d_h*h*(a + 2*k)) + V*h


def attention_context(s, window):
    """keys each query attends to, averaged over positions (causal, windowed) [tokens]"""
    return ((s - _min(s, window))*_min(s, window) + (1/2)*(_min(s, window) + 1)*_min(s, window))/s


def flops_attention_per_token(L, a, attention_context, d_h):
    """QKᵀ and AV, forward [FLOP]"""
    return 4*L*a*attention_context*d_h


def flops_per_token_forward(flops_attention_per_token, matmul_weights):
    """forward FLOPs per token [FLOP]"""
    return flops_attention_per_token + 2*matmul_weights


def flops_per_token_train(flops_per_token_forward):
    """model FLOPs per token (forward + backward = 3×; for MFU) [FLOP]"""
    return 3*flops_per_token_forward


def flops_recompute_per_token(E, K, L, V, ck_full, ck_selective, f, flops_per_token_forward, gated, h, moe):
    """forward recomputed in backward: every block (full) or the MLPs (selective) [FLOP]"""
    return 2*L*ck_selective*(E*h*moe + K*f*h*(gated + 2)) + ck_full*(-2*V*h + flops_per_token_forward)


def flops_per_token_hardware(flops_per_token_train, flops_recompute_per_token):
    """FLOPs executed per token (for HFU) [FLOP]"""
    return flops_per_token_train + flops_recompute_per_token


def flops_per_step(B, flops_per_token_train, s):
    """model FLOPs per optimizer step [FLOP]"""
    return B*flops_per_token_train*s


def flops_total(D, flops_per_token_train):
    """model FLOPs for the whole run [FLOP]"""
    return D*flops_per_token_train


def flops_6nd(D, params_active):
    """the 6·N·D rule, for comparison [FLOP]"""
    return 6*D*params_active


def memory_weights(psi, w_bpp):
    """weights on this GPU [B]"""
    return psi*w_bpp


def memory_gradients(g_bpp, psi):
    """gradients on this GPU [B]"""
    return g_bpp*psi


def memory_optimizer(o_bpp, psi):
    """optimizer states (+ fp32 master) on this GPU [B]"""
    return o_bpp*psi


def memory_gathered(P_L, w_bytes, zero3):
    """ZeRO-3: the largest module gathered, 16-bit params + grads (DeepSpeed's 4·P_largest) [B]"""
    return 2*P_L*w_bytes*zero3


def memory_model_states(memory_gathered, memory_gradients, memory_optimizer, memory_weights):
    """weights + gradients + optimizer (+ ZeRO-3 gathered module) [B]"""
    return _floor(memory_gathered + memory_gradients + memory_optimizer + memory_weights)


def act_norm(e, h, layernorm):
    """per token, one norm: LayerNorm saves x + fp32 mean, rstd; RMSNorm (composite) an fp32 copy of x, the fp32 normalised x and rstd [B]"""
    return layernorm*(e*h + 8) + (1 - layernorm)*(8*h + 4)


def act_attention(a, act_norm, d_h, dropout, e, h, k):
    """per token: norm, q/k/v input, q, k, v, SDPA out and its contiguous copy, fp32 log-sum-exp (+ dropout mask) [B]"""
    return 2*a*d_h*e + 4*a + act_norm + d_h*e*(a + 2*k) + dropout*h + e*h


def act_mlp(E, K, act_norm, dropout, e, f, gated, h, moe, relu):
    """per token: norm, MLP input, hidden tensors (GELU 2f, ReLU f, SwiGLU/GeGLU 4f; MoE: per routed token the gathered input, hidden tensors, weighted output, routing indices) [B]"""
    return act_norm + dropout*h + e*f*(1 - moe)*(2*gated - relu + 2) + e*h + moe*(4*E + K*(e*f*(2*gated - relu + 2) + 2*e*h + 20) + 4)


def act_layer(act_attention, act_mlp):
    """per token, one block, nothing recomputed [B]"""
    return act_attention + act_mlp


def act_layer_kept(act_attention, act_layer, ck_full, ck_none, ck_selective, e, h):
    """per token, one block, as kept for backward: all, attention + MLP input (selective), or the block input (full) [B]"""
    return act_layer*ck_none + ck_full*e*h + ck_selective*(act_attention + e*h)


def act_embedding(dropout, h):
    """per token: int64 ids (+ dropout mask) [B]"""
    return dropout*h + 8


def act_head(V, act_norm, e, h):
    """per token: final norm, LM-head input, fp32 log-softmax, int64 targets [B]"""
    return 4*V + act_norm + e*h + 8


def act_tables(P, d_h, e, learned, rope, s):
    """once per GPU: RoPE cos/sin tables (or position ids) [B]"""
    return 2*P*d_h*e*rope + 8*learned*s


def memory_activations(L_here, act_embedding, act_head, act_layer_kept, act_tables, b, first_stage, inflight, last_stage, s, t):
    """saved for backward by the micro-batches in flight (1F1B: p on the first stage) [B]"""
    return act_tables*first_stage + b*inflight*s*(L_here*act_layer_kept + act_embedding*first_stage + act_head*last_stage)/t


def buffer_logits(V, b, e, last_stage, s, t):
    """logits alive with their fp32 and output-dtype gradients [B]"""
    return V*b*last_stage*s*(2*e + 4)/t


def buffer_recompute(act_layer, act_mlp, act_norm, b, ck_full, ck_selective, s, t):
    """one block's activations rebuilt during backward [B]"""
    return b*s*(act_layer*ck_full + ck_selective*(act_mlp - act_norm))/t


def buffer_zero(g_bucket, overlap_comm, prefetch_bucket, psi, reduce_bucket, w_bytes, zero12, zero3):
    """DeepSpeed reduce buckets (ZeRO-1/2, doubled with overlap_comm); ZeRO-3 prefetch + reduce [B]"""
    return g_bucket*zero12*(overlap_comm + 1)*_min(psi, reduce_bucket) + zero3*(g_bucket*_min(psi, reduce_bucket) + w_bytes*_min(prefetch_bucket, psi))


def memory_buffers(buffer_logits, buffer_recompute, buffer_zero):
    """transients at the peak [B]"""
    return buffer_zero + _max(buffer_logits, buffer_recompute)


def memory_peak(memory_activations, memory_buffers, memory_model_states):
    """peak allocated bytes on this GPU [B]"""
    return memory_activations + memory_buffers + memory_model_states


def host_zero2_offload(n_gpu, psi):
    """ZeRO-1/2 + optimizer offload [B]"""
    return (3/2)*psi*_max(16, 4*n_gpu)


def host_zero2(gpus_per_node, psi):
    """ZeRO-0/1/2: fp32 model load per process [B]"""
    return 6*gpus_per_node*psi


def host_zero3_offload_all(nodes, psi):
    """ZeRO-3 + optimizer + params offload [B]"""
    return 27*psi/nodes


def host_zero3_offload(nodes, psi):
    """ZeRO-3 + optimizer offload [B]"""
    return 24*psi/nodes


def host_zero3(P_L, gpus_per_node):
    """ZeRO-3 without offload [B]"""
    return 6*P_L*gpus_per_node


def time_compute(B, F_peak, eff, flops_per_token_hardware, n_gpu, s):
    """seconds of math per step [s]"""
    return B*flops_per_token_hardware*s/(F_peak*eff*n_gpu)


def time_bubble(m, p, time_compute, v):
    """pipeline fill and drain [s]"""
    return time_compute*(p - 1)/(m*v)


def comm_dp_bytes(dp, g_bucket, m, psi, zero01, zero2, zero3):
    """bytes each GPU sends per step for data parallelism: all-reduce (ZeRO-0/1), reduce-scatter per micro-batch + weight all-gather (ZeRO-2), two all-gathers + reduce-scatter per micro-batch (ZeRO-3) [B]"""
    return psi*(dp - 1)*(2*g_bucket*zero01 + m*zero3*(g_bucket + 4) + zero2*(g_bucket*m + 2))/dp


def time_dp_exposed(bw_dp, comm_dp_bytes, m, overlap_comm, time_compute, zero01, zero2, zero3):
    """data-parallel traffic not hidden behind backward compute [s]"""
    return _max(0, -overlap_comm*time_compute*((2/3)*zero2 + zero3 + (2/3)*zero01/m) + comm_dp_bytes/bw_dp)


def time_tp(L_here, b, bw_tp, ck_full, e, h, m, s, t):
    """tensor-parallel collectives: 4 per block forward, 4 backward (+4 when recomputing) [s]"""
    return L_here*b*e*h*m*s*(4*ck_full + 8)*(t - 1)/(bw_tp*t)


def time_pp(b, bw_pp, e, h, m, p, s, t):
    """activations and their gradients sent between stages [s]"""
    return b*e*h*m*s*(2 - 2/p)/(bw_pp*t)


def time_offload(bw_host, cpu_adam_rate, g_bucket, gpus_per_node, offload, psi, shard, w_bytes):
    """optimizer offload: gradients down and weights back over PCIe, then the CPU optimizer step (ZeRO-Offload, Ren et al. 2021; not overlapped) [s]"""
    return offload*psi*(gpus_per_node/cpu_adam_rate + (g_bucket + w_bytes)/bw_host)/shard


def time_step(time_bubble, time_compute, time_dp_exposed, time_offload, time_pp, time_tp):
    """seconds per optimizer step [s]"""
    return time_bubble + time_compute + time_dp_exposed + time_offload + time_pp + time_tp


def tokens_per_second(B, s, time_step):
    """training throughput [tokens/s]"""
    return B*s/time_step


def time_total(steps, time_step):
    """wall-clock for the run [s]"""
    return steps*time_step


def gpu_hours(n_gpu, time_total):
    """GPU-hours [GPU·h]"""
    return (1/3600)*n_gpu*time_total


def cost(gpu_hours, price):
    """USD at the GPU-hour price [USD]"""
    return gpu_hours*price


def mfu(F_peak, flops_per_token_train, n_gpu, tokens_per_second):
    """model FLOPs utilisation []"""
    return flops_per_token_train*tokens_per_second/(F_peak*n_gpu)


def hfu(F_peak, flops_per_token_hardware, n_gpu, tokens_per_second):
    """hardware FLOPs utilisation (recompute counted) []"""
    return flops_per_token_hardware*tokens_per_second/(F_peak*n_gpu)


# Each formula's arguments, in evaluation order (inputs and earlier formulas).
ARGUMENTS = {
    'params_embedding': ('P', 'V', 'h', 'learned'),
    'params_attention': ('a', 'bias', 'd_h', 'h', 'k', 'qkv_bias'),
    'params_mlp': ('bias', 'f', 'gated', 'h'),
    'params_router': ('E', 'h', 'moe'),
    'params_norm': ('bias', 'h', 'layernorm'),
    'params_layer': ('E', 'params_attention', 'params_mlp', 'params_norm', 'params_router'),
    'params_lm_head': ('V', 'h', 'tied'),
    'params_total': ('L', 'params_embedding', 'params_layer', 'params_lm_head', 'params_norm'),
    'params_non_embedding': ('params_embedding', 'params_total'),
    'params_largest_module': ('E', 'P', 'V', 'a', 'bias', 'd_h', 'f', 'h', 'k', 'learned', 'moe', 'qkv_bias', 'rope'),
    'params_active': ('E', 'K', 'L', 'params_mlp', 'params_total'),
    'matmul_weights': ('E', 'K', 'L', 'V', 'a', 'd_h', 'f', 'gated', 'h', 'k', 'moe'),
    'attention_context': ('s', 'window'),
    'flops_attention_per_token': ('L', 'a', 'attention_context', 'd_h'),
    'flops_per_token_forward': ('flops_attention_per_token', 'matmul_weights'),
    'flops_per_token_train': ('flops_per_token_forward',),
    'flops_recompute_per_token': ('E', 'K', 'L', 'V', 'ck_full', 'ck_selective', 'f', 'flops_per_token_forward', 'gated', 'h', 'moe'),
    'flops_per_token_hardware': ('flops_per_token_train', 'flops_recompute_per_token'),
    'flops_per_step': ('B', 'flops_per_token_train', 's'),
    'flops_total': ('D', 'flops_per_token_train'),
    'flops_6nd': ('D', 'params_active'),
    'memory_weights': ('psi', 'w_bpp'),
    'memory_gradients': ('g_bpp', 'psi'),
    'memory_optimizer': ('o_bpp', 'psi'),
    'memory_gathered': ('P_L', 'w_bytes', 'zero3'),
    'memory_model_states': ('memory_gathered', 'memory_gradients', 'memory_optimizer', 'memory_weights'),
    'act_norm': ('e', 'h', 'layernorm'),
    'act_attention': ('a', 'act_norm', 'd_h', 'dropout', 'e', 'h', 'k'),
    'act_mlp': ('E', 'K', 'act_norm', 'dropout', 'e', 'f', 'gated', 'h', 'moe', 'relu'),
    'act_layer': ('act_attention', 'act_mlp'),
    'act_layer_kept': ('act_attention', 'act_layer', 'ck_full', 'ck_none', 'ck_selective', 'e', 'h'),
    'act_embedding': ('dropout', 'h'),
    'act_head': ('V', 'act_norm', 'e', 'h'),
    'act_tables': ('P', 'd_h', 'e', 'learned', 'rope', 's'),
    'memory_activations': ('L_here', 'act_embedding', 'act_head', 'act_layer_kept', 'act_tables', 'b', 'first_stage', 'inflight', 'last_stage', 's', 't'),
    'buffer_logits': ('V', 'b', 'e', 'last_stage', 's', 't'),
    'buffer_recompute': ('act_layer', 'act_mlp', 'act_norm', 'b', 'ck_full', 'ck_selective', 's', 't'),
    'buffer_zero': ('g_bucket', 'overlap_comm', 'prefetch_bucket', 'psi', 'reduce_bucket', 'w_bytes', 'zero12', 'zero3'),
    'memory_buffers': ('buffer_logits', 'buffer_recompute', 'buffer_zero'),
    'memory_peak': ('memory_activations', 'memory_buffers', 'memory_model_states'),
    'host_zero2_offload': ('n_gpu', 'psi'),
    'host_zero2': ('gpus_per_node', 'psi'),
    'host_zero3_offload_all': ('nodes', 'psi'),
    'host_zero3_offload': ('nodes', 'psi'),
    'host_zero3': ('P_L', 'gpus_per_node'),
    'time_compute': ('B', 'F_peak', 'eff', 'flops_per_token_hardware', 'n_gpu', 's'),
    'time_bubble': ('m', 'p', 'time_compute', 'v'),
    'comm_dp_bytes': ('dp', 'g_bucket', 'm', 'psi', 'zero01', 'zero2', 'zero3'),
    'time_dp_exposed': ('bw_dp', 'comm_dp_bytes', 'm', 'overlap_comm', 'time_compute', 'zero01', 'zero2', 'zero3'),
    'time_tp': ('L_here', 'b', 'bw_tp', 'ck_full', 'e', 'h', 'm', 's', 't'),
    'time_pp': ('b', 'bw_pp', 'e', 'h', 'm', 'p', 's', 't'),
    'time_offload': ('bw_host', 'cpu_adam_rate', 'g_bucket', 'gpus_per_node', 'offload', 'psi', 'shard', 'w_bytes'),
    'time_step': ('time_bubble', 'time_compute', 'time_dp_exposed', 'time_offload', 'time_pp', 'time_tp'),
    'tokens_per_second': ('B', 's', 'time_step'),
    'time_total': ('steps', 'time_step'),
    'gpu_hours': ('n_gpu', 'time_total'),
    'cost': ('gpu_hours', 'price'),
    'mfu': ('F_peak', 'flops_per_token_train', 'n_gpu', 'tokens_per_second'),
    'hfu': ('F_peak', 'flops_per_token_hardware', 'n_gpu', 'tokens_per_second'),
}

# The section of docs/formulas.md each formula belongs to.
GROUPS = {
    'params_embedding': 'Parameters',
    'params_attention': 'Parameters',
    'params_mlp': 'Parameters',
    'params_router': 'Parameters',
    'params_norm': 'Parameters',
    'params_layer': 'Parameters',
    'params_lm_head': 'Parameters',
    'params_total': 'Parameters',
    'params_non_embedding': 'Parameters',
    'params_largest_module': 'Parameters',
    'params_active': 'Parameters',
    'matmul_weights': 'FLOPs',
    'attention_context': 'FLOPs',
    'flops_attention_per_token': 'FLOPs',
    'flops_per_token_forward': 'FLOPs',
    'flops_per_token_train': 'FLOPs',
    'flops_recompute_per_token': 'FLOPs',
    'flops_per_token_hardware': 'FLOPs',
    'flops_per_step': 'FLOPs',
    'flops_total': 'FLOPs',
    'flops_6nd': 'FLOPs',
    'memory_weights': 'Memory: model states',
    'memory_gradients': 'Memory: model states',
    'memory_optimizer': 'Memory: model states',
    'memory_gathered': 'Memory: model states',
    'memory_model_states': 'Memory: model states',
    'act_norm': 'Memory: activations',
    'act_attention': 'Memory: activations',
    'act_mlp': 'Memory: activations',
    'act_layer': 'Memory: activations',
    'act_layer_kept': 'Memory: activations',
    'act_embedding': 'Memory: activations',
    'act_head': 'Memory: activations',
    'act_tables': 'Memory: activations',
    'memory_activations': 'Memory: activations',
    'buffer_logits': 'Memory: transient buffers and peak',
    'buffer_recompute': 'Memory: transient buffers and peak',
    'buffer_zero': 'Memory: transient buffers and peak',
    'memory_buffers': 'Memory: transient buffers and peak',
    'memory_peak': 'Memory: transient buffers and peak',
    'host_zero2_offload': 'Host memory per node',
    'host_zero2': 'Host memory per node',
    'host_zero3_offload_all': 'Host memory per node',
    'host_zero3_offload': 'Host memory per node',
    'host_zero3': 'Host memory per node',
    'time_compute': 'Time and cost',
    'time_bubble': 'Time and cost',
    'comm_dp_bytes': 'Time and cost',
    'time_dp_exposed': 'Time and cost',
    'time_tp': 'Time and cost',
    'time_pp': 'Time and cost',
    'time_offload': 'Time and cost',
    'time_step': 'Time and cost',
    'tokens_per_second': 'Time and cost',
    'time_total': 'Time and cost',
    'gpu_hours': 'Time and cost',
    'cost': 'Time and cost',
    'mfu': 'Time and cost',
    'hfu': 'Time and cost',
}


def evaluate(inputs, names=None):
    """Formulas in order (all, or just ``names``) from a dict of inputs; returns inputs and results together."""
    env = dict(inputs)
    scope = globals()
    for name, args in ARGUMENTS.items():
        if names is None or name in names:
            env[name] = scope[name](*[env[arg] for arg in args])
    return env
