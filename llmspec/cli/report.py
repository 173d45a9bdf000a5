"""Rich tables for ``llmspec plan``: every number with its unit, and what fits at a glance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from llmspec.planner.inputs import sequence_length
from llmspec.planner.post_inputs import REWARD
from llmspec.planner.result import TIME_ROWS
from llmspec.planner.training import Plan
from llmspec.spec.schema import Spec
from llmspec.spec.units import fmt_bytes, fmt_count, fmt_duration, fmt_flops, fmt_hours, fmt_money

if TYPE_CHECKING:  # measuring imports torch; the plan path must not
    from llmspec.compile.measure import Measurement
    from llmspec.train.timing import StepTiming

OK, NO = "[green]✓[/]", "[red]✗[/]"
# what the transient buffers are in the phase that sets the peak (PPO/GRPO have three phases; other runs one)
_BUFFERS = {"training": "logits / recompute / buckets", "generation": "KV cache, gathered policy, logits",
            "scoring": "a micro-batch's logits + log-softmax"}


def _trained(spec: Spec) -> str:
    post = spec.post_training
    adapter = post.adapter
    head = " + value head" if post.value_model else ""
    if adapter.type == "lora":
        targets = post.lora_targets(spec.model.fused_qkv, spec.model.gated, spec.model.moe is not None)
        return f"{post.method}: LoRA r {adapter.r} on {', '.join(targets)}{head}"
    if adapter.type == "prefix":
        return f"{post.method}: prefix, {adapter.n_virtual} virtual tokens{head}"
    return f"{post.method}: every weight{head}"


def _offload_label(optimizer: str, params: str) -> str:
    """A table cell: what is offloaded (-, opt, opt+par), and ' nvme' where it goes to NVMe."""
    if optimizer == "none" and params == "none":
        return "-"
    what = ("o+p" if "nvme" in (optimizer, params) else "opt+par") if params != "none" else "opt"
    return f"{what} nvme" if "nvme" in (optimizer, params) else what


def _of_node(held: int, size_gib: float | None) -> str:
    """'✓ of 2.00 TiB · ' where the spec gives the node's size, else nothing."""
    if size_gib is None:
        return ""
    return f"{OK if held <= size_gib * 2**30 else NO} of {fmt_bytes(int(size_gib * 2**30))} · "


def _training_flops_note(plan: Plan) -> str:
    spec = plan.spec
    post, moe = spec.post_training, spec.model.moe
    # training's expert capacity pads rows (or drops tokens): counted as run, so MFU includes the padding
    capacity = f"capacity {moe.capacity_factor:g}" if moe is not None and moe.capacity_factor is not None else ""
    # the policy's step (an RL plan's env holds the policy's flags): does it run a reference forward?
    reference = bool(plan.env["reference_in_step"])
    if post is None or (post.adapter.type == "none" and not reference):
        return f"3 × forward, {capacity} (for MFU)" if capacity else "3 × forward (model FLOPs, for MFU)"
    parts = ["forward + input gradients + adapter" if post.adapter.type != "none" else
             f"3 × forward{f', {capacity}' if capacity else ''}"]
    if reference:
        parts.append("reference forward")
    return " + ".join(parts)


def _frozen_note(plan: Plan) -> str:
    spec = plan.spec
    post, par = spec.post_training, spec.parallelism
    what = [f"{post.base_precision} base" if post.adapter.type != "none" else ""]
    if getattr(post, "reference", None) == "copy":
        what.append("reference copy")
    if any(model["role"] == REWARD for model in plan.models[1:]):
        what.append("reward model")
    where = "partitioned (ZeRO-3)" if par.zero_stage == 3 else "replicated (ZeRO shards what trains)"
    return f"{' + '.join(w for w in what if w)}, {where}"


def _attention_note(spec, flops: dict) -> str:
    """Which keys the queries see: causal, the layers that see fewer (windows, chunks), and under document masking
    the keys within each document against what SDPA computes under the mask."""
    kinds = spec.model.architecture.kinds
    local = [f"{count} {kind} ({span})" for (kind, span), count in sorted(kinds.items(), key=lambda item: item[0][0])
             if kind != "full"]
    note = "causal" + (f"; {', '.join(local)} of {spec.model.n_layers} layers" if local else "")
    if flops["attention_executed_per_token"] != flops["attention_per_token"]:
        note += f"; within documents, of {fmt_flops(flops['attention_executed_per_token'])} SDPA computes"
    return note


def render_plan(plan: Plan, console: Console) -> None:
    spec, p, f, mem, t = plan.spec, plan.params, plan.flops, plan.memory, plan.time
    par, tr, cl = spec.parallelism, spec.training, spec.cluster
    # two lines, each whole on an 80-column terminal: what and where, then how
    console.print(
        f"[bold]{spec.name}[/] · {fmt_count(p['total'])} params · {fmt_count(plan.total_tokens)} tokens · "
        f"{cl.gpus} × {plan.gpu_name} ({cl.nodes} node{'s' if cl.nodes > 1 else ''})\n{tr.precision} · "
        f"DP {par.data_parallel} × TP {par.tensor} × PP {par.pipeline}"
        f"{f' × CP {par.context}' if par.context > 1 else ''}"
        f"{f' ({par.virtual_stages} chunks each)' if par.virtual_stages != 1 else ''} · "
        f"micro-batch {tr.micro_batch_size} × {tr.gradient_accumulation_steps} accumulation")

    table = _table("Parameters", "count", "note")
    table.add_row("total", f"{p['total']:,}", "shared (tied) weights counted once")
    table.add_row("embedding", f"{p['embedding']:,}",
                  "token + learned position tables" if spec.model.position == "learned" else "token table")
    table.add_row("non-embedding", f"{p['non_embedding']:,}", "LM head included")
    table.add_row("active per token", f"{p['active']:,}", "MoE: top-k experts" if spec.model.moe else "dense")
    table.add_row("per block", f"{p['per_layer']:,}",
                  f"attention {fmt_count(p['attention_per_layer'])} + MLP {fmt_count(p['mlp_per_layer'])}")
    post = spec.post_training
    if post is not None:
        table.add_row("trainable", f"{p['trainable']:,}", _trained(spec))
        if p["frozen"]:
            table.add_row("frozen", f"{p['frozen']:,}", f"the base, stored {post.base_precision}"
                          + (" (double quant)" if post.double_quant else ""))
    console.print(table)

    table = _table("Compute", "FLOPs", "note")
    table.add_row("forward / token", fmt_flops(f["per_token_forward"]),
                  f"attention {fmt_flops(f['attention_per_token'])} ({_attention_note(spec, f)})")
    table.add_row("training / token", fmt_flops(f["per_token_train"]), _training_flops_note(plan))
    table.add_row("executed / token", fmt_flops(f["per_token_hardware"]),
                  f"with {par.activation_checkpointing} recompute (for HFU)")
    table.add_row("per step", fmt_flops(f["per_step"]), f"{fmt_count(plan.tokens_per_step)} tokens"
                  + (": generate, score, train" if plan.phases else ""))
    table.add_row("total", fmt_flops(f["total"]), f"6ND = {fmt_flops(f['six_nd'])}")
    console.print(table)

    table = _table(f"Memory per GPU ({par.byte_regime} regime, peak stage: {plan.stage})", "bytes", "")
    table.add_row("weights", fmt_bytes(mem["weights"]), "")
    table.add_row("gradients", fmt_bytes(mem["gradients"]), "")
    states = "16-bit states, no master" if par.byte_regime == "pure16" and tr.precision != "fp32" else \
        "fp32 states" + ("" if tr.precision == "fp32" else " + master")
    table.add_row("optimizer", fmt_bytes(mem["optimizer"]), f"{tr.optimizer.name}, {states}")
    if mem["gathered"]:
        table.add_row("ZeRO-3 gathered module", fmt_bytes(mem["gathered"]), "16-bit params + grads")
    if mem["frozen"]:
        table.add_row("frozen weights", fmt_bytes(mem["frozen"]), _frozen_note(plan))
    table.add_row("[bold]model states[/]", fmt_bytes(mem["model_states"]), f"ZeRO-{par.zero_stage}")
    peak_phase = plan.peak_phase
    table.add_row("activations", fmt_bytes(mem["activations"]), f"checkpointing {par.activation_checkpointing}"
                  + ("" if peak_phase == "training" else f" (none saved in {peak_phase})")
                  + ("; soft-capped scores kept (b·heads·s²)" if spec.model.attn_softcap is not None else ""))
    table.add_row("buffers", fmt_bytes(mem["buffers"]), _BUFFERS[peak_phase])
    if mem["fp8_weights"]:
        table.add_row("FP8 weights", fmt_bytes(mem["fp8_weights"]), "block weights cast for FP8 matmuls")
    verdict = OK if mem["peak"] <= plan.usable_memory else NO
    table.add_row("[bold]peak[/]", f"[bold]{fmt_bytes(mem['peak'])}[/]",
                  f"{verdict} of {fmt_bytes(plan.usable_memory)} usable ({fmt_bytes(plan.gpu_memory)} GPU)")
    cl = plan.spec.cluster
    if plan.host_memory:
        same = plan.host_memory == plan.host_memory_deepspeed
        table.add_row("host per node", fmt_bytes(plan.host_memory),
                      _of_node(plan.host_memory, cl.host_memory_gib)
                      + ("DeepSpeed's estimator" if same else "the node's offloaded states × 1.5"))
        if not same:
            table.add_row("  DeepSpeed's", fmt_bytes(plan.host_memory_deepspeed), "its estimator: params × 4 × all "
                          "GPUs × 1.5, not one node's")
    if plan.nvme_memory:
        table.add_row("NVMe per node", fmt_bytes(plan.nvme_memory),
                      _of_node(plan.nvme_memory, cl.nvme_gib) + "offloaded states")
    console.print(table)

    table = _table("Time and cost", "value", "note")
    table.add_row("step", fmt_duration(t["step_seconds"]), "the sum of the rows below")
    for name, phase in plan.phases.items():
        table.add_row(f"  {name}", fmt_duration(phase["seconds"]),
                      f"peak {fmt_bytes(phase['memory'])}" + (" ◀" if name == peak_phase else ""))
    # an RL step's rows are its phases; any other step's, compute and what is exposed beside it
    # each row of the time model with what it is (result.TIME_ROWS); parts of a row are indented under it
    for key, label, note in () if plan.phases else TIME_ROWS:
        if t[key] > 0 or key == "compute_seconds":
            share = f"{t[key] / t['step_seconds']:.0%}" if t["step_seconds"] else ""
            table.add_row(f"  {label}", fmt_duration(t[key]), " · ".join(filter(None, (share, note))))
    table.add_row("throughput", f"{fmt_count(t['tokens_per_second'])} tokens/s",
                  f"MFU {t['mfu']:.1%} · HFU {t['hfu']:.1%} (matmuls at {plan.efficiency:.0%})")
    pub = plan.published
    if pub:
        table.add_row("published", f"{pub['tflops_per_gpu']:,.0f} TFLOP/s/GPU",
                      f"planned {pub['planned_tflops_per_gpu']:,.0f} ({pub['ratio']:.2f}×); {pub['source']}")
    table.add_row("run", fmt_duration(t["total_seconds"]), f"{t['steps']:,} steps")
    table.add_row("GPU-hours", fmt_hours(t["gpu_hours"]), "")
    table.add_row("cost", fmt_money(t["cost"]), f"at ${plan.env['price']:.2f}/GPU-hour")
    console.print(table)

    if plan.alternatives:
        render_alternatives(plan, console)


def render_alternatives(plan: Plan, console: Console) -> None:
    # 80 columns: one space between columns, nothing cut (no_wrap and a width that fits; tests render it)
    table = Table(title=f"Strategies: memory per GPU (GiB; {plan.usable_memory / 2**30:.1f} usable) and time",
                  title_justify="left", box=None, padding=(0, 1, 0, 0), header_style="bold")
    for column in ("ZeRO", "ckpt", "offload", "states", "activ.", "peak", "fits", "step", "days", "cost"):
        table.add_column(column, justify="left" if column in ("ckpt", "offload") else "right", no_wrap=True)
    gib = 2**30
    for alt in plan.alternatives:
        s = alt.strategy
        offload = _offload_label(s.offload_optimizer, s.offload_params)
        table.add_row(str(s.zero_stage), s.activation_checkpointing, offload,
                      f"{alt.memory['model_states'] / gib:.1f}", f"{alt.memory['activations'] / gib:.1f}",
                      f"{alt.memory['peak'] / gib:.1f}", OK if alt.fits else NO, fmt_duration(alt.step_seconds),
                      f"{alt.total_seconds / 86400:.1f}", fmt_money(alt.cost) + (" ◀" if alt.chosen else ""),
                      style="bold" if alt.chosen else None)
    console.print(table)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, show_header=False)
    table.add_column("", style="cyan")
    for column in columns:
        table.add_column(column, justify="right" if column in ("count", "FLOPs", "bytes", "value") else "left")
    return table


def _ratio(c) -> str:
    """planned / measured, or "none" where both are nothing (no frozen weights, no scoring model)."""
    return "none" if c.measured == c.planned == 0 else f"{c.ratio:.4f}"


def measurement_table(result: Measurement) -> Table:
    """Measured beside planned, one row per quantity, with the ratio planned / measured."""
    tr = result.spec.training
    table = Table(title=f"{result.spec.name}: the compiled model measured vs the plan, one micro-batch of "
                        f"{tr.micro_batch_size} × {sequence_length(result.spec)} tokens, by checkpointing mode",
                  title_justify="left",
                  show_edge=False)
    for column in ("", "measured", "planned", "planned/measured"):
        table.add_column(column, justify="right" if column else "left", style=None if column else "cyan")
    table.add_row("parameters", f"{int(result.params.measured):,}", f"{int(result.params.planned):,}",
                  f"{result.params.ratio:.4f}")
    if result.trainable is not None:
        c = result.trainable
        table.add_row("  trainable", f"{int(c.measured):,}", f"{int(c.planned):,}", f"{c.ratio:.4f}")
        c = result.frozen_bytes
        table.add_row("frozen weights", fmt_bytes(c.measured), fmt_bytes(c.planned), _ratio(c))
    for mode, c in result.flops.items():
        table.add_row(f"FLOPs · {mode}", fmt_flops(c.measured), fmt_flops(c.planned), f"{c.ratio:.4f}")
    for mode, c in result.activations.items():
        table.add_row(f"activations · {mode}", fmt_bytes(c.measured), fmt_bytes(c.planned), f"{c.ratio:.4f}")
    for name, c in result.phases.items():  # ppo/grpo, per GPU per step
        label, show = {"generation_flops": ("generation FLOPs", fmt_flops), "kv_cache_bytes": ("KV cache", fmt_bytes),
                       "scoring_flops": ("scoring FLOPs", fmt_flops)}[name]
        table.add_row(label, show(c.measured), show(c.planned), _ratio(c))
    table.caption = "\n".join(f"· {note}" for note in result.notes)
    table.caption_justify = "left"
    return table


def render_plan_summary(spec: Spec, console: Console, planned: Plan | None = None) -> None:
    """The plan in three lines, printed before training starts (``planned``: the spec's plan, where the caller
    holds it already)."""
    from llmspec.planner.training import plan as make_plan

    p = planned if planned is not None and planned.is_for(spec) else make_plan(spec, alternatives=False)
    tr, mem, t = spec.training, p.memory, p.time
    console.print(f"[bold]{spec.name}[/] · {p.params['total']:,} params · {tr.steps:,} steps × "
                  f"{tr.global_batch_size} × {tr.seq_len} tokens = {fmt_count(tr.total_tokens)} tokens · "
                  f"{tr.precision} on {spec.cluster.gpus} × {p.gpu_name}")
    console.print(f"plan: peak {fmt_bytes(mem['peak'])} of {fmt_bytes(p.usable_memory)} usable "
                  f"({'fits' if p.fits else 'does not fit'}) · {fmt_flops(p.flops['per_step'])} per step · "
                  f"about {fmt_duration(t['total_seconds'])} at {p.efficiency:.0%} of peak")


def render_size(result, spec, console: Console, sets: list[str] | None = None) -> None:
    """The Pareto frontier of ``llmspec size`` as a table, best layout marked."""
    console.print(f"[bold]{spec.name}[/] · {fmt_count(spec.training.total_tokens)} tokens · scored "
                  f"{result.evaluated:,} layouts, {result.feasible:,} feasible · frontier of time vs cost "
                  f"(best by {result.objective} ◀)")
    if not result.frontier:
        console.print("no layout fits within the limits: relax --deadline or --budget, raise --max-gpus, or add "
                      "GPU types with --gpu")
        return
    # 80 columns: compact cells, one space between columns; the command to reproduce is one --set per line
    # a fine-tune is data-parallel only: its column says how the frozen base is stored instead of the split
    fine_tune = spec.post_training is not None
    table = Table(box=None, padding=(0, 1, 0, 0), header_style="bold")
    for column in ("GPU", "GPUs", "base" if fine_tune else "TP×PP(v)×DP", "ZeRO", "micro", "ckpt", "offload",
                   "GiB", "days", "GPU-h", "cost"):  # GiB: the peak per GPU
        table.add_column(column, justify="left" if column in ("GPU", "ckpt", "offload") else "right", no_wrap=True)
    for x in result.frontier:
        offload = _offload_label(x.offload_optimizer, x.offload_params)
        chunks = f"({x.virtual_stages})" if x.virtual_stages > 1 else ""  # interleaved 1F1B
        layout = x.base_precision if fine_tune else \
            f"{x.tensor}×{x.pipeline}{chunks}×{x.data_parallel}" + _split_suffix(x)
        table.add_row(x.gpu, f"{x.gpus:,}", layout, str(x.zero_stage), str(x.micro_batch_size),
                      x.activation_checkpointing, offload, f"{x.peak_memory / 2**30:.1f}",
                      f"{x.seconds / 86400:,.1f}", fmt_count(x.gpu_hours), fmt_money(x.cost) +
                      (" ◀" if x is result.best else ""), style="bold" if x is result.best else None)
    console.print(table)
    if result.best:
        console.print("reproduce the best:")
        # the user's own --set first: the best layout's replace them where they overlap
        console.print(reproduce_command(spec.name, [*(sets or []), *result.best.sets()]), soft_wrap=True,
                      highlight=False)


def _split_suffix(layout) -> str:
    """Context and expert degrees beside TP×PP(v)×DP, where the layout uses them (c: context, e: expert)."""
    return "".join(f"{letter}{degree}" for letter, degree in (("c", layout.context), ("e", layout.expert))
                   if degree > 1)


def render_size_explanation(why, console: Console) -> None:
    """``size --explain``: the best layout's run against the runner-up's, term by term (days of the run)."""
    from llmspec.planner.size_explain import TERMS

    best, other = why.best, why.runner_up
    if other is None:
        console.print("the best is the only layout on the frontier: nothing feasible is faster or cheaper")
        return
    console.print(f"why the best beats the runner-up ({other.gpus:,} × {other.gpu}, "
                  f"{other.tensor}×{other.pipeline}×{other.data_parallel}{_split_suffix(other)}, ZeRO "
                  f"{other.zero_stage}, {other.activation_checkpointing}): the run's time per term")
    table = Table(box=None, padding=(0, 1, 0, 0), header_style="bold")
    for column in ("term", "best", "runner-up", "difference"):
        table.add_column(column, justify="left" if column == "term" else "right", no_wrap=True)
    def signed(days: float) -> str:
        return ("+" if days >= 0 else "−") + fmt_duration(abs(days) * 86400)

    for term, (mine, theirs) in why.days.items():
        table.add_row(TERMS[term], fmt_duration(mine * 86400), fmt_duration(theirs * 86400), signed(mine - theirs),
                      style="bold" if term == why.deciding else None)
    table.add_row("run", fmt_duration(best.seconds), fmt_duration(other.seconds),
                  signed((best.seconds - other.seconds) / 86400))
    console.print(table)
    mine, theirs = (best.seconds, other.seconds) if why.objective == "time" else (best.cost, other.cost)
    if theirs - mine <= 1e-3 * theirs:  # the search's order, not the time model, separates them
        console.print(f"a tie on {why.objective} (within 0.1%): the runner-up, at {fmt_money(other.cost)} against "
                      f"{fmt_money(best.cost)}, is as good a choice")
        return
    console.print(f"deciding: {TERMS[why.deciding]}; cost {fmt_money(best.cost)} against {fmt_money(other.cost)}")


def reproduce_command(name: str, sets: list[str]) -> str:
    """A shell command that pastes whole: one --set per line, continued with backslashes (never wrapped)."""
    return " \\\n".join([f"  llmspec plan {name}", *(f"    --set {item}" for item in sets)])


def render_compute_optimal(result, console: Console, written) -> None:
    console.print(f"[bold]compute-optimal sizing[/] for {fmt_flops(result.compute)} of training compute")
    table = Table(show_edge=False)
    for column in ("rule", "parameters", "tokens", "tokens/param", "predicted loss"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    labels = {"20_tokens_per_param": "20 tokens per parameter", "chinchilla_2022": "Chinchilla fit (2022)",
              "besiroglu_2024": "Besiroglu refit (2024)"}
    for rule, values in result.rules.items():
        loss = f"{values['loss']:.3f}" if "loss" in values else ""
        table.add_row(labels[rule], fmt_count(values["params"]), fmt_count(values["tokens"]),
                      f"{values['tokens'] / values['params']:.1f}", loss)
    console.print(table)
    mo = result.spec.model
    console.print(f"architecture at the 20× size: {mo.n_layers} layers · d_model {mo.d_model} · {mo.n_heads} heads "
                  f"({mo.n_kv_heads} kv) · head_dim {mo.head_dim} · d_ff {mo.d_ff} · vocab {mo.vocab_size} = "
                  f"{result.params:,} parameters, {fmt_count(result.spec.training.total_tokens)} tokens")
    if written:
        console.print(f"wrote {written} (llmspec plan / size / build accept it)")


def render_inference(served: dict, console: Console) -> None:
    console.print(f"[bold]serving[/] on {served['tensor']} × {served['gpu']} (one replica, tensor parallel) · "
                  f"context {served['context']:,} · batch {served['batch']}")
    table = _table("", "value", "note")
    table.add_row("weights / GPU", fmt_bytes(served["inference_weights"]), "")
    table.add_row("KV cache / token", fmt_bytes(served["kv_cache_per_token"]), "K and V, every layer, kv heads")
    table.add_row("KV cache / GPU", fmt_bytes(served["kv_cache"]), "the batch at full context")
    table.add_row("memory / GPU", fmt_bytes(served["inference_memory"]),
                  f"{'fits' if served['fits'] else 'does not fit'} in {fmt_bytes(served['usable'])}")
    if served["max_batch"] >= 1:
        table.add_row("max batch", f"{int(served['max_batch']):,}", "at this context")
    else:
        table.add_row("max batch", "0", "the weights leave no room for one sequence's KV cache")
    table.add_row("decode", f"{served['decode_tokens_per_second']:,.0f} tokens/s",
                  f"{served['decode_step'] * 1e3:.2f} ms per step (memory-bandwidth bound)")
    table.add_row("prefill", fmt_duration(served["prefill_seconds"]), "the batch's prompts (compute bound)")
    console.print(table)


def step_timing_table(timing: StepTiming) -> Table:
    """``measure --steps``: the plan's step, term by term, against the measured one; throughput, MFU, peak."""
    t, spec = timing.planned.time, timing.spec
    table = Table(title=f"{spec.name} · {timing.steps} timed steps here ({timing.backend}) against the plan",
                  title_justify="left")
    table.add_column("term")
    table.add_column("planned", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("", justify="left")
    measured = timing.measured_step
    table.add_row("step", fmt_duration(t["step_seconds"]), fmt_duration(measured),
                  f"planned / measured {timing.ratio:.2f}")
    for key, label, note in TIME_ROWS:
        if t[key] > 0 or key == "compute_seconds":
            table.add_row(f"  {label}", fmt_duration(t[key]), "", note)
    tokens = spec.training.tokens_per_step
    table.add_row("throughput", f"{fmt_count(t['tokens_per_second'])} tokens/s",
                  f"{fmt_count(tokens / measured)} tokens/s", "")
    table.add_row("MFU", f"{t['mfu']:.1%}", "" if timing.mfu is None else f"{timing.mfu:.1%}", "")
    table.add_row("peak memory", fmt_bytes(timing.planned.memory["peak"]), fmt_bytes(timing.peak_memory),
                  timing.peak_memory_source)
    return table
