"""Inference, the RL step's phases and totals, and compute-optimal sizing."""

from __future__ import annotations

import sympy as sp

from llmspec.planner.formulas.memory import frozen_held
from llmspec.planner.formulas.model import (
    fwd,
    hw,
    keys_all_layers,
    lora_layer,
    matmul,
    policy_bytes,
    ref_flops,
    train,
)
from llmspec.planner.formulas.registry import RL_STEP, _add, _div, _f, _mul, define, group
from llmspec.planner.formulas.symbols import (
    B,
    F_peak,
    L,
    L_ch,
    L_sl,
    V,
    _s,
    a,
    b,
    bw_dp,
    causal,
    chunk,
    d_h,
    dp,
    e,
    eff,
    h,
    k,
    n_gpu,
    n_v,
    prefix,
    price,
    psi,
    s,
    steps,
    t,
    w_bytes,
    window,
    z3,
)

# ---- inference ---------------------------------------------------------------------------------------------
group("Inference", "one model replica over t tensor-parallel GPUs; decode reads every weight and the whole KV "
      "cache once per step (memory-bound), prefill is compute-bound")
ctx, bsz, kv_e, mem_usable, bw_hbm, fwd_ctx = _s("context batch kv_bytes usable hbm_bandwidth F_fwd", positive=True)
kv_token = define("kv_cache_per_token", 2 * L * k * d_h * kv_e,
                  "K and V of one position in every layer and key/value head (GQA-aware)", "B")
kv_sequence = define("kv_cache_per_sequence",
                     2 * k * d_h * kv_e * ((L - L_sl - L_ch) * ctx + L_sl * sp.Min(window, ctx)
                                           + L_ch * sp.Min(chunk, ctx)),
                     "K and V one sequence of this context holds: a full layer's of every position, a sliding "
                     "layer's of its window, a chunked layer's of (at most) one chunk", "B")
inf_w = define("inference_weights", psi * w_bytes, "weights on one GPU", "B")
kv_all = define("kv_cache", bsz * kv_sequence / t, "the KV cache of the batch at full context, per GPU", "B")
define("inference_memory", inf_w + kv_all, "weights + KV cache per GPU", "B")
define("max_batch", sp.floor((mem_usable - inf_w) / (kv_sequence / t)),
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
               "activation dtype: the compiled model's cache holds every position in every layer (a sliding or "
               "chunked layer slices its keys when it attends; kv_cache_per_sequence, the serving plan's, holds "
               "only its window or chunk, as transformers' cache does)", "B")
rl_gather = define("rl_gathered_policy", z3 * (1 - 1 / dp) * policy_bytes,
                   "ZeRO-3: the rest of the policy gathered whole for generation", "B")
rl_logits = n_roll * V * 4
define("rl_generation_buffers", kv_rl + rl_gather + rl_logits,
       "generation's transients: KV cache, gathered weights, the next token's fp32 logits", "B")
per_token = 2 * matmul + 2 * L * lora_layer
head = 2 * V * h
# keys over every layer (a sliding layer's window, a chunked layer's chunk) and the prefix's in each
prefill_keys = causal * keys_all_layers(s_p) + L * ((1 - causal) * s_p * s_p + s_p * prefix * n_v)
prefill = define("rl_prefill_flops", n_roll * (s_p * (per_token - head) + head + 4 * a * d_h * prefill_keys),
                 "the prompts' forward (each query sees the keys before it, within its layer's window or chunk; "
                 "prefix keys too), logits at the last position only", "FLOP")
decode_keys = keys_all_layers(s_p + s_r - 1) - keys_all_layers(s_p) + L * (s_r - 1) * prefix * n_v
decode_flops = define("rl_decode_flops", n_roll * ((s_r - 1) * per_token + 4 * a * d_h * decode_keys),
                      "the other s_r - 1 tokens (prefill gave the first) one at a time for every rollout: the token "
                      "at position n attends to n keys (at most its layer's window or chunk) and the prefix", "FLOP")
decode_bytes = define("rl_decode_bytes", s_r * policy_bytes + n_roll * 2 * k * d_h * e * decode_keys,
                      "bytes generation reads: every weight once per forward, and the KV cache so far", "B")
define("time_generation", prefill / (F_peak * eff) + sp.Max(decode_bytes / bw_hbm, decode_flops / (F_peak * eff))
       + rl_gather / bw_dp,
       "prefill at the achieved FLOP rate + decode at the slower of memory bandwidth and FLOPs (+ the ZeRO-3 "
       "gather)", "s")

# ---- post-training: the RL step -----------------------------------------------------------------------------
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

