"""Time and cost of a training step: compute, pipeline bubble and imbalance, exposed communication."""

from __future__ import annotations

import sympy as sp

from llmspec.planner.formulas.model import att_run, fwd_attn, hw, train
from llmspec.planner.formulas.registry import _f, define, group
from llmspec.planner.formulas.symbols import (
      INPUT_DOCS,
      B,
      F_mm,
      F_peak,
      K,
      L,
      L_here,
      L_last,
      L_max,
      V,
      _s,
      a,
      adam_rate,
      b,
      bw_cp,
      bw_dp,
      bw_ep,
      bw_host,
      bw_pp,
      bw_tp,
      cf,
      ck_full,
      ck_sel,
      cp,
      d_h,
      dp,
      e,
      eff,
      ep,
      ep_ov,
      f,
      g_bucket,
      g_comm,
      gated,
      gpn,
      h,
      k,
      ln,
      m,
      moe,
      n_gpu,
      n_norm,
      o_bpp,
      offload,
      overlap,
      p,
      price,
      psi,
      qk_full,
      qk_head,
      rope,
      s,
      s_local,
      shard,
      sp_on,
      steps,
      t,
      tp_ov,
      v,
      w_bytes,
      z01,
      z2,
      z3,
)

# ---- time and cost -----------------------------------------------------------------------------------------
group("Time and cost", "each kernel class at its own rate: matmuls at a calibrated fraction of peak, attention at "
      "its kernel's fraction (FlashAttention-2, Dao 2023), memory-bound elementwise work as bytes over HBM "
      "bandwidth; + exposed communication (ring collectives: (d-1)/d of the bytes each way; ZeRO-3's per-layer "
      "gathers hidden only behind the neighbouring layer's compute) + pipeline bubble (p-1)/(v·m) of the slowest "
      "stage's time (Narayanan et al. 2021)")
# the time model's own inputs (the device's kernel rates: device_inputs; docs/calibration.md says where each comes from)
eff_af, eff_ab, half_ctx, bw_mem, passes, reduce_bkt = _s(
    "attention_fwd_eff attention_bwd_eff attention_half_context bw_memory elementwise_passes reduce_bucket_bytes",
    positive=True)
unfused = sp.Symbol("attention_materialised", nonnegative=True)
INPUT_DOCS.update({
    "attention_fwd_eff": "fraction of the 16-bit peak the attention kernel's forward reaches at long context on this "
    "GPU generation and head dim (FlashAttention-2, what torch's SDPA runs)",
    "attention_bwd_eff": "likewise for the attention kernel's backward (dQ, dK, dV with the scores recomputed)",
    "attention_half_context": "keys per query at which the attention kernel reaches half its long-context rate "
    "(short and causal sequences fill fewer, partly masked tiles)",
    "bw_memory": "bytes/s the memory-bound kernels achieve of the GPU's HBM bandwidth",
    "elementwise_passes": "HBM passes of an RMSNorm or RoPE written as torch ops, relative to one fused read and "
    "write (fitted: their casts to fp32, squares, means and rotations are kernels of their own)",
    "reduce_bucket_bytes": "bytes of the last gradient bucket, reduced after the backward that fills it",
    "attention_materialised": "1 when attention materialises its scores (torch's math kernel on CPU, Megatron-LM "
    "2021's fused softmax), 0 for a fused FlashAttention kernel",
})
tok_gpu = B * s / n_gpu  # tokens of the step per GPU, in the FLOP count's sense (every GPU's share of the work)
# attention (QKᵀ, AV: forward, backward 2×, forward again under full checkpointing) at its kernel's rates, slower for
# short or narrow contexts; the rest of the executed FLOPs are matmuls, at F_matmul (the FP8 rate under fp8). The
# attention is what the kernel runs: under document masking SDPA computes every key (att_run), not the attended ones.
att_exec = (3 + ck_full) * att_run
length = _f("attention_context") / (_f("attention_context") + half_ctx)
t_matmul = define("time_matmul", (hw - att_exec) * tok_gpu / (F_mm * eff),
                  "seconds of matmuls per step (recompute included) at the calibrated fraction of peak", "s")
flash = att_run * tok_gpu * ((1 + ck_full) / eff_af + 2 / eff_ab) / (F_peak * length)
# Without a fused kernel (torch's math attention on CPU, Megatron-LM 2021) the scores are materialised: QKᵀ and AV
# run as batched matmuls over every key (the mask applied after), and each of the a·s scores per token and layer is
# written, read and written by the softmax, read by AV (4 passes forward), twice that backward.
scores = L * a * s * e * 4 * (3 + ck_full)
materialised = (3 + ck_full) * fwd_attn / _f("attention_context") * s * tok_gpu / (F_peak * eff) \
    + scores * tok_gpu / bw_mem
t_att = define("time_attention_kernels", (1 - unfused) * flash + unfused * materialised,
               "seconds of attention per step: a fused kernel's forward (again under full checkpointing) and "
               "backward, each at its fraction of peak, less at short context; or (materialised) batched matmuls "
               "over every key and the scores' memory traffic", "s")
# Memory-bound work per token, as bytes each kernel reads and writes once: a block's norms (2h each: two, four
# sandwiched, and QK-norm's over q and k) and two residual adds (6h; every tensor-parallel rank repeats them unless
# sequence parallelism splits them), RoPE on q and k, the
# MLP's activation (its gate product); RMSNorm and RoPE written as torch ops make elementwise_passes passes (casts
# to fp32, squares, means, rotations each a kernel of its own), LayerNorm is one kernel; forward once,
# backward twice (gradient in, saved input, gradient out), recompute once more; the loss's log-softmax over the
# vocabulary in fp32 (split over tensor-parallel ranks with the head).
replicated = (t - (t - 1) * sp_on)
eager = ln + (1 - ln) * passes  # torch's layer_norm is one fused kernel; an RMSNorm written in torch ops is not
block_hr = e * (h * replicated * (6 + 2 * n_norm * eager) + (qk_head + qk_full) * 2 * (a + k) * d_h * eager
               + rope * 2 * (a + k) * d_h * passes)
block_act = e * (2 + gated) * f * K * cf
loss_bytes = (2 * e + 12) * V
elem_bytes = define("bytes_elementwise_per_token",
                    L * ((3 + ck_full) * block_hr + (3 + ck_full + ck_sel) * block_act) + loss_bytes,
                    "HBM bytes the memory-bound kernels move per token, summed over the GPUs that process it", "B")
t_elem = define("time_elementwise", elem_bytes * tok_gpu / bw_mem,
                "seconds of memory-bound kernels (norms, activations, residuals, RoPE, loss) per step", "s")
t_compute = define("time_compute", t_matmul + t_att + t_elem,
                   "seconds of math per step: matmuls, attention, memory-bound kernels", "s")
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
# What DeepSpeed does (the default engine): ZeRO-0/1 all-reduce the gradients once, in buckets under the last
# micro-batch's backward; ZeRO-2 reduce-scatters each micro-batch's gradients under its backward and all-gathers the
# updated weights after the optimizer step (not overlapped); ZeRO-3 all-gathers each layer's weights before its
# forward and again before its backward, prefetching the next while the current computes, and reduce-scatters its
# gradients once they are done. Each collective hides only behind the compute running beside it: the first layer's
# gather and the last bucket have nothing to hide behind, and a layer whose transfer outlasts its neighbour's
# compute (small micro-batches, slow inter-node links) exposes the difference. Without overlap_comm the gradient
# reduction waits.
ring = (dp - 1) / dp / bw_dp
fwd_share = 1 / (3 + ck_full)  # of a step's compute, the forward's (backward 2×, and the recompute under full)
bwd_mb = t_compute * (1 - fwd_share) / m  # one micro-batch's backward
last_bucket = sp.Min(psi * g_comm, reduce_bkt) * ring
reduce_01 = 2 * psi * g_comm * ring
t_dp01 = overlap * (sp.Max(0, reduce_01 - bwd_mb) + 2 * last_bucket) + (1 - overlap) * reduce_01
reduce_2 = psi * g_comm * ring
t_dp2 = m * (overlap * (sp.Max(0, reduce_2 - bwd_mb) + last_bucket) + (1 - overlap) * reduce_2) + psi * w_bytes * ring
gather = psi / L_here * w_bytes * ring  # one layer's weights
scatter = psi / L_here * g_comm * ring  # one layer's gradients
layer_fwd = t_compute * fwd_share / (m * L_here)
layer_bwd = layer_fwd * (2 + ck_full)
t_z3 = define("time_zero3_exposed",
              z3 * m * (gather + L_here * sp.Max(0, gather - layer_fwd)
                        + overlap * (scatter + L_here * sp.Max(0, gather + scatter - layer_bwd))
                        + (1 - overlap) * L_here * (scatter + sp.Max(0, gather - layer_bwd))),
              "ZeRO-3 traffic not hidden: per micro-batch, the first layer's gather, each layer's forward gather and "
              "backward gather + reduce-scatter beyond what the neighbouring layer's compute hides, the last "
              "reduce-scatter", "s")
t_dp = define("time_dp_exposed", z01 * t_dp01 + z2 * t_dp2 + t_z3,
              "data-parallel traffic not hidden behind compute: the gradient reduction beyond the backward beside "
              "it and its last bucket, ZeRO-2's weight all-gather after the step, ZeRO-3's exposed gathers", "s")
t_opt = define("time_optimizer", (1 - offload) * psi * o_bpp * sp.Rational(5, 2) / bw_mem,
               "the optimizer step on the GPU: its states read and written, the fp32 gradient read and the 16-bit "
               "weight written (about half the states' bytes again), over HBM bandwidth", "s")
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
t_attention = define("time_attention", t_att * L_here * p / L,
                     "seconds of attention kernels per step on this GPU (its stage's layers), which the ring "
                     "exchange hides behind", "s")
t_cp = define("time_cp", sp.Max(0, cp_bytes / bw_cp - t_attention),
              "context-parallel key/value exchange not hidden behind attention", "s")
step = define("time_step", t_compute + t_imbalance + t_bubble + t_dp + t_opt + t_tp + t_pp + t_off + t_ep
              + t_cp,
              "seconds per optimizer step", "s")
tps = define("tokens_per_second", B * s / step, "training throughput", "tokens/s")
secs = define("time_total", steps * step, "wall-clock for the run", "s")
gpuh = define("gpu_hours", secs * n_gpu / 3600, "GPU-hours", "GPU·h")
define("cost", gpuh * price, "USD at the GPU-hour price", "USD")
define("mfu", train * tps / (n_gpu * F_peak), "model FLOPs utilisation", "")
define("hfu", hw * tps / (n_gpu * F_peak), "hardware FLOPs utilisation (recompute counted)", "")


