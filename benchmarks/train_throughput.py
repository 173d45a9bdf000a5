"""Training-step throughput: the generated model against transformers' model, same config, same weights.

One step = forward + backward + AdamW on one batch. Both models run in this process with the same threads,
alternating step by step so drift on a shared machine hits both alike; the medians are compared.

    .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--threads 2]

fp32 and bf16 (pure bf16 parameters); on this CPU class bf16 has no native matmul and runs far slower, so its
batch is smaller. On a CUDA machine (--device cuda) it also prints MFU against the catalogue's peak.
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
          f"{args.steps} timed steps (median)\n")
    header = f"{'config':<12} {'dtype':<9} {'batch':>9} {'transformers tok/s':>19} {'llmspec tok/s':>14} {'ratio':>6}"
    print(header + ("  MFU (llmspec)" if args.device == "cuda" else ""))
    for name, config in CONFIGS.items():
        for dtype_name, (batch_size, seq_len) in SHAPES.items():
            dtype = getattr(torch, dtype_name)
            theirs, ours, spec = pair(config, dtype, args.device)
            torch.manual_seed(1)
            batch = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=args.device)
            # transformers shifts labels inside; ours takes the shifted targets
            targets = torch.roll(batch, -1, dims=1)
            steps = {"hf": step_fn(theirs, batch, batch, True), "ours": step_fn(ours, batch, targets, False)}
            times: dict[str, list[float]] = {"hf": [], "ours": []}
            for i in range(args.warmup + args.steps):
                for key, step in steps.items():
                    elapsed = timed(step, args.device)
                    if i >= args.warmup:
                        times[key].append(elapsed)
            tokens = batch_size * seq_len
            hf_rate, our_rate = (tokens / statistics.median(times[k]) for k in ("hf", "ours"))
            line = (f"{name:<12} {dtype_name:<9} {f'{batch_size}x{seq_len}':>9} {hf_rate:>19,.0f} "
                    f"{our_rate:>14,.0f} {our_rate / hf_rate:>5.2f}x")
            if args.device == "cuda":
                line += "  " + mfu(spec, seq_len, our_rate, dtype_name)
            print(line)


if __name__ == "__main__":
    main()
