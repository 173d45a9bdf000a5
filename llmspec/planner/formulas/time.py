"""Time and cost of a training step: compute, pipeline bubble and imbalance, exposed communication."""

from __future__ import annotations

import sympy as sp

from llmspec.planner.formulas.model import fwd_attn, hw, train
from llmspec.planner.formulas.registry import define, group
from llmspec.planner.formulas.symbols import (
      B,
      F_mm,
      F_peak,
      K,
      L,
      L_here,
      L_last,
      L_max,
      V,
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
      g_bucket,
      g_comm,
      gpn,
      h,
      k,
      m,
      moe,
      n_gpu,
      offload,
      overlap,
      p,
      price,
      psi,
      s,
      s_local,
      shard,
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


