"""The ``Method`` protocol: what a training method gives the one loop, its engines and `llmspec run`.

A method is built for a spec (``Method(spec)``) and answers:
- ``check_runnable()``: its refusals before anything is prepared (one line, exit 2);
- ``model(job, module)``: what the engine trains, with the method's extra trained models (PPO's critic);
- ``loss(model)``: its loss on one micro-batch (``llmspec.train.losses.Loss``, frozen reference included);
- ``objective(job, engine)``: its batch sources (train, val) and how the loop steps over them;
- ``metrics(engine, objective)``: what an evaluation adds to val_loss;
- ``tokens_per_step()``: the tokens a step trains on (tokens/s and MFU);
- ``token_cross_entropy``: whether its loss is a next-token cross-entropy (eval lines add val_perplexity);
- ``step_notice(metrics)``: a line worth saying about a step line's metrics (GRPO: no group had a signal);
- ``sample_prompts(job)``: what samples.txt shows after the run.
A post-training method (``PostTrainingMethod``) also prepares its data: which records it reads, which it holds out
and the files it writes to RUN_DIR/data/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.data.instructions import read_records, save_examples, tokenise
from llmspec.spec.schema import Spec
from llmspec.train.init_from import initial_model
from llmspec.train.objectives import ACCURACY_PROMPTS, Objective, task_accuracy

if TYPE_CHECKING:
    from llmspec.train.engine import Engine
    from llmspec.train.job import Job
    from llmspec.train.losses import Loss


class Method:
    """A training method for one spec; subclasses fill in ``loss`` and ``objective``."""

    #: the name a spec gives it (``post_training.method``; pretraining has no post_training section)
    name: ClassVar[str]
    #: whether the loss is a next-token cross-entropy, so exp(val_loss) is a perplexity (not a preference or RL loss)
    token_cross_entropy: ClassVar[bool] = True

    def __init__(self, spec: Spec):
        self.spec = spec
        self.post = spec.post_training

    def check_runnable(self) -> None:
        """Refuse (``LLMSpecError``, one line) what `llmspec run` cannot execute for this method."""

    def model(self, job: Job, module=None) -> torch.nn.Module:
        """The module the engine trains, before step 0 (``module``: the compiled model.py, already loaded)."""
        return initial_model(job, module)

    def loss(self, model: torch.nn.Module) -> Loss:
        """The loss for ``model`` (the module ``model()`` built, on the engine's device)."""
        raise NotImplementedError

    def objective(self, job: Job, engine: Engine) -> Objective:
        """Where the loop's batches come from (train, val) and how it steps over them."""
        raise NotImplementedError

    def metrics(self, engine: Engine, objective: Objective) -> dict[str, Any]:
        """What an evaluation adds to val_loss: the held-out prompts answered exactly right, where there are some."""
        if not objective.held_out:
            return {}
        return {"task_accuracy": task_accuracy(engine, objective.held_out[:ACCURACY_PROMPTS],
                                               objective.tokenizer_file)}

    def tokens_per_step(self) -> int:
        """The tokens one optimizer step trains on (as the planner counts them)."""
        return self.spec.training.tokens_per_step

    def step_notice(self, metrics: dict[str, Any]) -> str | None:
        """A line to say about a step line's metrics (``Objective.step_metrics``), or None."""
        return None

    def sample_prompts(self, job: Job) -> list[str]:
        """The prompts samples.txt continues after the run."""
        raise NotImplementedError


class PostTrainingMethod(Method):
    """A method on a pretrained base, trained on records (the built-in task set's, or data.corpus's): the
    instruction-tuned policies answer held-out prompts (task_accuracy) and sample them after the run."""

    def read_records(self, path: Path) -> list[dict[str, str]]:
        """data.corpus's records in the shape this method trains on."""
        return read_records(path)

    def held_out(self, val: list[dict[str, str]], builtin: bool) -> list[dict[str, str]]:
        """The held-out {prompt, answer} records task_accuracy answers: the built-in task set's (a user's records
        carry no answer to check)."""
        return [{"prompt": r["prompt"], "answer": r["answer"]} for r in val] if builtin else []

    def tokenise(self, records: list[dict], tokenizer, source: str, template: ChatTemplate) -> list:
        """Records → the examples the batch source reads (refusing, naming the record, one that does not fit)."""
        return tokenise(records, tokenizer, self.spec.training.seq_len, source, template)

    def data_files(self, train: list[dict], val: list[dict], held_out: list[dict], tokenizer, template: ChatTemplate,
                   source: str, data: Path) -> dict[str, list]:
        """Write what the batch sources read into ``data`` (RUN_DIR/data/: train.json and val.json, the examples),
        refusing a bad record before anything is written; returns the JSON files still to write there."""
        examples = {name: self.tokenise(records, tokenizer, f"{source} ({name})", template)
                    for name, records in (("train", train), ("val", val))}
        data.mkdir(parents=True, exist_ok=True)
        for name, encoded in examples.items():
            save_examples(encoded, data / f"{name}.json")
        return {"held_out.json": held_out} if held_out else {}

    def sample_prompts(self, job: Job) -> list[str]:
        """Three held-out prompts in the run's template (or its validation prompts)."""
        template = ChatTemplate.beside(job.tokenizer_file)
        held_out = job.run_dir / "data" / "held_out.json"
        records = json.loads(held_out.read_text()) if held_out.is_file() else []
        return [template.prompt(r) for r in records[:3]] or [template.prompt({"prompt": "Hello"})]

    def held_out_records(self, job: Job) -> list[dict[str, str]]:
        """The held-out {prompt, answer} records ``data_files`` wrote."""
        answers = job.run_dir / "data" / "held_out.json"
        return json.loads(answers.read_text()) if answers.is_file() else []
