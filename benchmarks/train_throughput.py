"""Training-step throughput: the generated model against transformers' model, same config, same weights.

One step = forward + backward + AdamW on one batch, with the optimizer each library trains with by default (fused
AdamW: llmspec's make_optimizer, transformers' Trainer on torch >= 2.8). The models run in this process with the
same threads, alternating step by step so drift on a shared machine hits both alike; the medians are compared.
"llmspec compiled" is the same model under torch.compile (``llmspec run --compile``).

The "matmul floor" column is the ratio llmspec would reach if everything but its matrix multiplies took no time
(profiled aten::mm/addmm/bmm time of one step): the ceiling for any change that keeps the model's math.

    .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--threads 2] [--no-bf16]

fp32 and bf16 (pure bf16 parameters); on this CPU class bf16 has no native matmul and runs far slower, so its
batch is smaller. On a CUDA machine (--device cuda) it also prints MFU against the catalogue's peak.
The last table is the default spec (tiny, what ``make run`` trains): its MFU eager and compiled, and its profile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from llmspec.compile.loading import model_module
from llmspec.interop.hf import import_hf
from llmspec.spec.loading import load_spec

CONFIGS = {
    "gpt2-style": GPT2Config(vocab_size=8192, n_embd=384, n_layer=6, n_head=6, n_positions=512),
    "llama-style": LlamaConfig(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                               num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512),
}
SHAPES = {"float32": (8, 256), "bfloat16": (2, 128)}  # (batch, seq_len)


def pair(config, dtype: torch.dtype, device: str):
    """transformers' model and ours, with equal weights, in ``dtype`` on ``device``."""
    torch.manual_seed(0)
    theirs = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(Path(tmp) / "hf")
        import_hf(Path(tmp) / "hf", Path(tmp) / "ours")
        spec = load_spec(Path(tmp) / "ours" / "spec.yaml")
        ours = model_module(spec).Model()
        ours.load_state_dict(load_file(Path(tmp) / "ours" / "model.safetensors"), strict=True)
    return theirs.to(device, dtype).train(), ours.to(device, dtype).train(), spec


def step_fn(model, batch, targets, is_hf: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        if is_hf:
            loss = model(input_ids=batch, labels=targets).loss
        else:
            loss = model(batch, targets)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def matmul_share(step) -> float:
    """The fraction of one step's CPU time spent in matrix multiplies (the profiler's self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / total


def timed(step, device: str) -> float:
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def mfu(spec, seq_len: int, tokens_per_second: float, dtype_name: str) -> str:
    """Model FLOPs utilisation against the catalogue's dense peak for this GPU (n/a when it is not listed)."""
    from llmspec.planner.training import plan
    from llmspec.spec import catalogue

    training = spec.training.model_copy(update={"seq_len": seq_len})
    flops = plan(spec.model_copy(update={"training": training}), alternatives=False).flops["per_token_train"]
    achieved = flops * tokens_per_second
    name = torch.cuda.get_device_name(0)
    key = next((k for k in ("H200", "H100-SXM", "A100-80GB") if k.split("-")[0] in name), None)
    precision = "bf16" if dtype_name == "bfloat16" else "fp32"
    peak = catalogue.lookup(key).peak_flops.get(precision) if key else None
    return f"{achieved / 1e12:.1f} TFLOP/s" + (f", MFU {achieved / peak:.1%} of {key}" if peak else ", MFU n/a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only (bf16 on this CPU class is slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
          f"{args.steps} timed steps (median)\n")
    header = (f"{'config':<12} {'dtype':<9} {'batch':>7} {'transformers':>12} {'llmspec':>9} {'compiled':>9} "
              f"{'ratio':>6} {'compiled':>8} {'matmul floor':>12}")
    print(header + ("  MFU (llmspec)" if args.device == "cuda" else ""))
    print(f"{'':<12} {'':<9} {'':>7} {'tok/s':>12} {'tok/s':>9} {'tok/s':>9} {'':>6} {'ratio':>8}")
    shapes = {k: v for k, v in SHAPES.items() if not (args.no_bf16 and k == "bfloat16")}
    for name, config in CONFIGS.items():
        for dtype_name, (batch_size, seq_len) in shapes.items():
            dtype = getattr(torch, dtype_name)
            theirs, ours, spec = pair(config, dtype, args.device)
            torch.manual_seed(1)
            batch = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=args.device)
            # transformers shifts labels inside; ours takes the shifted targets
            targets = torch.roll(batch, -1, dims=1)
            steps = {"hf": step_fn(theirs, batch, batch, True), "ours": step_fn(ours, batch, targets, False),
                     "compiled": step_fn(torch.compile(ours), batch, targets, False)}
            times: dict[str, list[float]] = {key: [] for key in steps}
            for i in range(args.warmup + args.steps):
                for key, step in steps.items():
                    elapsed = timed(step, args.device)
                    if i >= args.warmup:
                        times[key].append(elapsed)
            tokens = batch_size * seq_len
            rate = {key: tokens / statistics.median(value) for key, value in times.items()}
            floor = 1 / matmul_share(steps["ours"]) * rate["ours"] / rate["hf"]
            line = (f"{name:<12} {dtype_name:<9} {f'{batch_size}x{seq_len}':>7} {rate['hf']:>12,.0f} "
                    f"{rate['ours']:>9,.0f} {rate['compiled']:>9,.0f} {rate['ours'] / rate['hf']:>5.2f}x "
                    f"{rate['compiled'] / rate['hf']:>7.2f}x {floor:>11.2f}x")
            if args.device == "cuda":
                line += "  " + mfu(spec, seq_len, rate["ours"], dtype_name)
            print(line)
    if args.device == "cpu":
        default_run_mfu(args)


def default_run_mfu(args) -> None:
    """MFU of the default spec's training step on this CPU (the catalogue's fp32 peak for `cpu`)."""
    from llmspec.compile.loading import model_module
    from llmspec.planner import plan
    from llmspec.spec import catalogue
    from llmspec.train.optim import make_optimizer

    spec = load_spec("tiny")
    tr = spec.training
    peak = catalogue.lookup("cpu").peak_flops["fp32"]
    flops = plan(spec, alternatives=False).flops["per_token_train"] * tr.tokens_per_step
    torch.manual_seed(0)
    batch = torch.randint(0, spec.model.vocab_size, (tr.micro_batch_size, tr.seq_len))
    targets = torch.roll(batch, -1, dims=1)
    print(f"\ndefault spec (tiny, `make run`): {tr.micro_batch_size}x{tr.seq_len} tokens per step, "
          f"{flops / 1e9:.1f} GFLOP per step, peak {peak / 1e9:.0f} GFLOP/s")
    for label, compiled in (("eager", False), ("compiled", True)):
        model = model_module(spec).Model()
        optimizer = make_optimizer(spec, model, "cpu")
        forward = torch.compile(model) if compiled else model

        def step(forward=forward, optimizer=optimizer):
            forward(batch, targets)[1].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(args.warmup + 1):
            step()
        seconds = statistics.median(timed(step, "cpu") for _ in range(args.steps))
        share = matmul_share(step)
        print(f"  {label:<9} {seconds * 1000:6.1f} ms/step  MFU {flops / seconds / peak:5.1%}  "
              f"(matmuls {share:.0%} of the step; the rest is attention, norms, activations, loss, optimizer)")


if __name__ == "__main__":
    main()
