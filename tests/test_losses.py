"""Each method's loss as an engine computes it (llmspec/train/methods/) against its published formula, computed
here by hand from the model's own logits or scores; preference pairs as batches; reward and DPO end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmspec.compile.loading import model_module, objectives_module
from llmspec.data.chat import DEFAULT_TEMPLATE
from llmspec.data.corpus import DataError
from llmspec.data.instructions import IGNORE, Example, PairBatches, read_records
from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.init_from import load_initial_weights
from llmspec.train.logprobs import last_positions
from llmspec.train.methods import method_for
from llmspec.train.metrics import read_metrics

PAIRS = [(Example([5, 6], [7, 8, 0]), Example([5, 6], [9, 0])), (Example([3], [4, 0]), Example([3], [2, 2, 0]))]


def _model(*sets: str):
    torch.manual_seed(0)
    spec = load_spec("tiny", ["model.n_layers=1", *sets])
    return spec, model_module(spec).Model()


def test_pair_batches_put_the_chosen_first_and_mask_prompt_and_padding():
    x, y = PairBatches(PAIRS, 8, 2, seed=0, split="train").rows([c for c, _ in PAIRS] + [r for _, r in PAIRS])
    assert x.shape == y.shape == (4, 8)
    assert x[0, :5].tolist() == [5, 6, 7, 8, 0] and y[0].tolist() == [IGNORE, 7, 8, 0] + [IGNORE] * 4
    assert y[3].tolist() == [2, 2, 0] + [IGNORE] * 5  # the rejected of pair 2: [3] then [2, 2, 0]
    assert last_positions(y).tolist() == [3, 1, 2, 2]


def test_reward_loss_is_bradley_terry_on_the_score_after_the_last_response_token():
    spec, model = _model("post_training.method=reward")
    x, y = PairBatches(PAIRS, 8, 2, seed=0, split="train").rows([c for c, _ in PAIRS] + [r for _, r in PAIRS])
    scores = model(x)[0]
    chosen = torch.stack([scores[0, 3], scores[1, 1]])  # the input positions of each last response token
    rejected = torch.stack([scores[2, 2], scores[3, 2]])
    by_hand = -F.logsigmoid(chosen.double() - rejected.double()).mean()
    assert method_for(spec).loss(model)(model, x, y).item() == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("rpo_alpha", [0.0, 1.0])
def test_dpo_loss_with_a_reference_copy_is_the_published_formula(rpo_alpha):
    spec, model = _model("post_training.method=dpo", "post_training.beta=0.5",
                         f"post_training.rpo_alpha={rpo_alpha}")
    loss = method_for(spec).loss(model)  # the reference: a copy of the model as it is now
    x, y = PairBatches(PAIRS, 8, 2, seed=0, split="train").rows([c for c, _ in PAIRS] + [r for _, r in PAIRS])
    assert loss(model, x, y).item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + rpo_alpha * _nll(
        model, x, y), rel=1e-6)  # policy = reference: every margin is 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the policy moves; the reference does not
    def logp(m):
        per_token = torch.log_softmax(m(x)[0].double(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
        return (per_token * (y != IGNORE)).sum(-1)

    policy, ref = logp(model), logp(loss.reference.frozen)
    margin = (policy[:2] - ref[:2]) - (policy[2:] - ref[2:])
    by_hand = -F.logsigmoid(0.5 * margin).mean() + rpo_alpha * _nll(model, x, y)
    assert loss(model, x, y).item() == pytest.approx(by_hand.item(), rel=1e-5)


def _nll(model, x, y) -> float:
    """The chosen responses' NLL per token (RPO's term)."""
    chosen_x, chosen_y = x[:2], y[:2]
    return F.cross_entropy(model(chosen_x)[0].double().flatten(0, 1), chosen_y.flatten(), ignore_index=IGNORE).item()


def test_dpo_reference_adapter_off_is_the_base():
    spec, model = _model("post_training.method=dpo", "post_training.adapter.type=lora")
    loss = method_for(spec).loss(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # the adapters now change the output
    x, y = PairBatches(PAIRS, 8, 2, seed=0, split="train").rows([c for c, _ in PAIRS] + [r for _, r in PAIRS])
    reference = loss.reference.logprobs(x, y)
    assert loss.reference.frozen is None and all(m.enabled for m in model.modules() if hasattr(m, "enabled"))
    module = objectives_module(model_module(spec))
    with_adapters = module.sequence_logprobs(model(x)[0], y)
    model.set_adapters(False)
    assert torch.equal(reference, module.sequence_logprobs(model(x)[0], y))
    assert not torch.allclose(reference, with_adapters)


def test_preference_records_are_checked(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path.write_text("\n".join([good] * 8 + [json.dumps({"prompt": "p", "chosen": "a"})]))
    with pytest.raises(DataError, match=f"{path}:9: missing rejected"):
        read_records(path, pairs=True)


def test_a_reward_model_takes_the_base_without_its_lm_head(base):
    spec = load_spec("tiny-reward", [f"training.init_from={base}"])
    model = model_module(spec).Model()
    load_initial_weights(model, base / "model.safetensors")
    plain = model_module(load_spec("tiny")).Model()
    load_initial_weights(plain, base / "model.safetensors")
    assert torch.equal(model.embed.weight, plain.embed.weight) and not hasattr(model, "lm_head")


@pytest.mark.integration
def test_reward_model_learns_the_held_out_preferences(base, tmp_path):
    """The chain as `make post-train` runs it, on shorter budgets: sft, then a reward model from it (DPO's
    learning: test_learning.py)."""
    run(load_spec("tiny-sft", [f"training.init_from={base}", "training.max_steps=100"]), tmp_path / "sft",
        announce=lambda *a: None)
    sft = tmp_path / "sft"
    run(load_spec("tiny-reward", [f"training.init_from={sft}", "training.max_steps=150",
                                  "training.eval_interval=50"]), tmp_path / "reward", announce=lambda *a: None)
    evals = [r for r in read_metrics(tmp_path / "reward" / "metrics.jsonl") if "reward_accuracy" in r]
    assert evals[0]["step"] == 0 and evals[-1]["reward_accuracy"] >= 0.9
    assert "scores of the reward model" in (tmp_path / "reward" / "samples.txt").read_text()
    from llmspec.data.tasks import task_records
    from llmspec.train.generate import generate

    def score(prompt: str, answer: str) -> float:  # a reward model's generate is its score of the text
        return float(generate(tmp_path / "reward", f"Question: {prompt}\nAnswer: {answer}").split()[0])

    records = task_records("held_out")[:8]
    assert sum(score(r["prompt"], r["chosen"]) > score(r["prompt"], r["rejected"]) for r in records) >= 6


@pytest.mark.integration
def test_dpo_with_precomputed_reference_trains_as_with_a_copy(base, tmp_path):
    """reference: precomputed scores every pair with the start once, before step 0 (TRL's precompute_ref_log_probs),
    and holds no reference model: the same losses and held-out metrics as a frozen copy of the start."""
    short = [f"training.init_from={base}", "training.max_steps=3", "training.eval_interval=3",
             "training.checkpoint_interval=3"]
    for reference in ("copy", "precomputed"):
        run(load_spec("tiny-dpo", [*short, f"post_training.reference={reference}"]), tmp_path / reference,
            announce=lambda *a: None)
    copy, precomputed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("copy", "precomputed"))
    assert [r["step"] for r in precomputed] == [r["step"] for r in copy]
    for mine, theirs in zip(precomputed, copy, strict=True):
        for key in ("loss", "val_loss", "preference_accuracy", "reward_margin"):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (mine["step"], key)


# ---- GRPO -----------------------------------------------------------------------------------------------------

def test_grpo_loss_is_the_clipped_objective_plus_k3_kl_per_sequence_token_mean():
    module = objectives_module(model_module(load_spec("tiny-grpo")))  # the generated loss, as runs and measure use it
    grpo_loss, kl_k3 = module.grpo_loss, module.kl_k3
    policy = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    reference = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    loss = grpo_loss(policy, reference, advantages, mask, clip=0.2, kl_coef=0.1)
    k3 = torch.exp(reference - policy.detach()) - (reference - policy.detach()) - 1
    by_hand = ((2 * -2.0 + 0.1 * (k3[0, 0] + k3[0, 1])) / 2 + (1.0 + 0.1 * k3[1, 0]) / 1) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert torch.all(kl_k3(policy.detach(), reference) >= 0)
    loss.backward()  # the ratio's gradient is the policy gradient: -A/n per response token (+ the KL's)
    kl_grad = 0.1 * (1 - torch.exp(reference - policy.detach()))
    assert policy.grad[0, 0].item() == pytest.approx(((-2.0 + kl_grad[0, 0]) / 2 / 2).item(), rel=1e-5)
    assert policy.grad[0, 2].item() == 0  # padding learns nothing


def test_rollouts_are_verified_group_normalised_and_deterministic(base):
    from tokenizers import Tokenizer

    from llmspec.train.rollouts import RolloutBatches, verify

    assert verify(" 52 ", "52") == 1.0 and verify("5", "52") == 0.0
    spec = load_spec("tiny-grpo", [f"training.init_from={base}", "post_training.group_size=4",
                                   "training.global_batch_size=8", "training.micro_batch_size=4"])
    model = model_module(spec).Model()
    load_initial_weights(model, base / "model.safetensors")
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    records = [{"prompt": "Larger: 24 or 10", "answer": "24"}, {"prompt": "First word: list node", "answer": "list"}]
    source = RolloutBatches(model, records, tokenizer, DEFAULT_TEMPLATE, spec, dp=1)
    x, y, advantages = source.get(step=3, micro=0)
    again = RolloutBatches(model, records, tokenizer, DEFAULT_TEMPLATE, spec, dp=1).get(step=3, micro=0)
    assert torch.equal(x, again[0]) and torch.equal(advantages, again[2])
    assert x.shape == (4, spec.post_training.prompt_len + spec.post_training.response_len)
    _, _, all_advantages = source.cached[0][1]
    for group in all_advantages.view(-1, 4):  # zero mean within each group (all zero when every answer agrees)
        assert abs(group.sum().item()) < 1e-4
    assert (y[:, :10] == IGNORE).all()  # the prompt learns nothing
