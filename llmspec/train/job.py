"""Prepare a run: refuse what cannot work before anything starts, then build, tokenize and lay out RUN_DIR.

RUN_DIR holds spec.yaml, tokenizer.json, build/ (the compiler's output), metrics.jsonl, loss.png, samples.txt
and checkpoints/. A pretraining run's data step is ``llmspec.data.pipeline`` (what ``llmspec prepare`` runs alone):
tokenizers and token shards are cached by what they are made of under ``$LLMSPEC_CACHE`` (default
``~/.cache/llmspec``) and shared between runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from llmspec.compile.build import MANIFEST, build, check_output_dir
from llmspec.data import sources
from llmspec.data.chat import TEMPLATE_FILES, ChatTemplate, copy_template_files
from llmspec.data.corpus import BUILTIN, DataError
from llmspec.data.instructions import check_records
from llmspec.data.packed import Prepared
from llmspec.data.pipeline import PreparedData, cache_dir, prepare_data, report
from llmspec.data.progress import ProgressLine
from llmspec.data.tasks import task_records
from llmspec.data.tokenizer import load_tokenizer
from llmspec.errors import DoesNotFitError, LLMSpecError
from llmspec.files import write_atomic
from llmspec.planner.result import Plan
from llmspec.planner.training import plan
from llmspec.spec.compare import RESUME_SAFE, unsafe_resume_changes
from llmspec.spec.loading import dump_spec, parse_spec
from llmspec.spec.schema import Spec
from llmspec.spec.units import fmt_bytes
from llmspec.train.checkpoint import latest_checkpoint, resumable_checkpoint
from llmspec.train.init_from import InitSource, check_init_from
from llmspec.train.limits import Refusals
from llmspec.train.methods import PostTrainingMethod, method_for
from llmspec.train.preflight import check_runnable


@dataclass(frozen=True)
class Job:
    spec: Spec
    run_dir: Path
    shards: Prepared | None  # pretraining's token shards (post-training reads run_dir/data/ instead)
    resume: bool
    init_weights: Path | None = None  # training.init_from's weights file (absolute), loaded before step 0
    # the plan `run` made once and handed down (its step lines quote it); None in a DeepSpeed rank, which plans
    # again only on the rank that writes metrics
    plan: Plan | None = field(default=None, compare=False)

    @property
    def model_file(self) -> Path:
        return self.run_dir / "build" / "model.py"

    @property
    def tokenizer_file(self) -> Path:
        return self.run_dir / "tokenizer.json"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def to_json(self) -> dict:
        shards = {} if self.shards is None else {"tokens": str(self.shards.directory.resolve())}
        return {**shards, "resume": self.resume, "init_weights": str(self.init_weights) if self.init_weights else None}


def check_fits(spec: Spec, result: Plan) -> None:
    """Refuse a spec whose plan (``result``) does not fit its device, quoting the plan."""
    if result.host_misfit:
        raise DoesNotFitError(f"{spec.name}: does not fit: {result.host_misfit}; `llmspec plan` on the same spec "
                              "and --set flags shows the strategies that fit")
    if not result.fits:
        mem = result.memory
        raise DoesNotFitError(
            f"{spec.name}: does not fit: planned peak {fmt_bytes(mem['peak'])} per {result.gpu_name} exceeds the "
            f"usable {fmt_bytes(result.usable_memory)} (states {fmt_bytes(mem['model_states'])}, activations "
            f"{fmt_bytes(mem['activations'])}, buffers {fmt_bytes(mem['buffers'])}); `llmspec plan` on the same spec "
            "and --set flags shows the strategies that fit")


def _quiet(line: str) -> None:
    """The default ``announce``: says nothing."""


# What a run writes in RUN_DIR (a directory holding others of the user's is refused without force; these first
# when it names them). job.json, or the build's manifest, marks a directory a run prepared.
RUN_FILES = ("spec.yaml", "tokenizer.json", "job.json", "metrics.jsonl", "loss.png", "samples.txt", "build",
             "checkpoints", "data", *TEMPLATE_FILES)


def check_run_dir(run_dir: Path, resume: bool, force: bool = False) -> None:
    """Refuse a run directory the run would spoil: one with checkpoints without ``resume`` (or none with it), and
    (unless ``force``) a directory that holds files a run did not write."""
    checkpoints = run_dir / "checkpoints"
    previous = latest_checkpoint(checkpoints)
    if previous and not resume:
        raise LLMSpecError(f"{run_dir}: holds checkpoints (latest {previous.name}); pass --resume to continue, or "
                           "--out another directory")
    if not resume:
        if not force:
            _refuse_foreign_files(run_dir)
        return
    if not previous:
        raise LLMSpecError(f"{run_dir}: --resume given but there is no checkpoint to resume from")


def _refuse_foreign_files(run_dir: Path) -> None:
    if not run_dir.is_dir() or (run_dir / "job.json").is_file() or (run_dir / "build" / MANIFEST).is_file():
        return  # new, or a directory a run prepared: its files are the run's own
    names = sorted((p.name for p in run_dir.iterdir() if not p.name.startswith(".")),
                   key=lambda name: (name not in RUN_FILES, name))
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise LLMSpecError(f"{run_dir}: holds files a run did not write ({shown}); --out a new or empty directory, "
                           "or --force to train there anyway (it replaces those a run writes; nothing was written)")


def _resume_from(run_dir: Path, spec: Spec, announce: Callable[[str], None]) -> None:
    """Refuse a resume whose spec changed what a resumed run keeps, or whose checkpoints are all unreadable; name an
    unreadable newest checkpoint, which the run passes over for the previous, intact one."""
    spec_file = run_dir / "spec.yaml"
    if not spec_file.is_file():
        raise LLMSpecError(f"{run_dir}: --resume needs the run's spec.yaml, which is not there")
    saved = parse_spec(spec_file.read_text(), source=str(spec_file))
    changed = unsafe_resume_changes(saved, spec)
    if changed:
        raise LLMSpecError(f"{spec_file}: --resume with changed {', '.join(changed)}; a resumed run keeps "
                           f"its model, data and optimizer (only {', '.join(RESUME_SAFE)} may change)")
    checkpoints = run_dir / "checkpoints"
    if (checkpoints / "deepspeed").is_dir():
        return  # DeepSpeed's engine resumes from its own checkpoint files
    path, skipped = resumable_checkpoint(checkpoints)
    for bad, why in skipped:
        announce(f"{bad}: unreadable ({why}); --resume continues from the previous checkpoint, {path.name}, which "
                 "is intact")


def check_data(spec: Spec) -> None:
    """The cheap checks of the spec's data, which a dry run makes and a run makes before reading it all: the corpus
    exists, is readable and of a kind its method reads, and its first records parse."""
    corpus = spec.data.corpus
    if spec.post_training is None:
        if spec.data.document_masking and spec.parallelism.pipeline > 1:
            raise DataError("data.document_masking: not with parallelism.pipeline > 1 (the pipeline's stages pass "
                            "activations only, not the documents' boundaries)")
        sources.check(sources.resolve(spec.data))
    elif spec.data.sources is not None:
        raise DataError("data.sources: post-training reads its records from data.corpus")
    elif corpus != BUILTIN:
        for path in [corpus] if isinstance(corpus, str) else corpus:
            check_records(Path(path).expanduser())


def prepare(spec: Spec, run_dir: Path, resume: bool, refusals: Refusals, dry_run: bool = False,
            planned: Plan | None = None, force: bool = False, announce: Callable[[str], None] = _quiet
            ) -> Job | None:
    """Refuse what cannot run (``refusals``: the answer of the engine that will run it), then (unless ``dry_run``:
    refusals only, nothing written) lay out RUN_DIR. ``planned``: the spec's plan, where the caller made it (with
    its alternatives: build's plan.json holds them); planned here otherwise, once. ``force``: train in a directory
    that holds files a run did not write. ``announce``: told what the run will do other than the spec says (a GPU
    spec on this CPU: in a dry run; the engine says it as it starts), an unreadable checkpoint passed over, and the
    data steps as they start and end (reading the corpus, training the tokenizer, encoding: each can take minutes).

    A dry run makes every check a run makes before it reads the data whole: the fit, the engine's and the method's
    refusals, the run directory, the corpus (each file exists and is readable, its first records parse) and the
    tokenizer (it loads and fits the model's vocabulary)."""
    if planned is None or not planned.is_for(spec):
        planned = plan(spec)
    check_fits(spec, planned)
    notice = check_runnable(spec, refusals)
    if notice and dry_run:
        announce(notice)
    if spec.model.vocab_size > 2**32:
        raise LLMSpecError("model.vocab_size: token ids must fit in uint32")
    vocab = spec.data.tokenizer.vocab_size or spec.model.vocab_size
    if spec.post_training is None and vocab > spec.model.vocab_size:
        raise LLMSpecError(f"data.tokenizer.vocab_size: {vocab} exceeds model.vocab_size {spec.model.vocab_size}")
    check_output_dir(run_dir)
    check_run_dir(run_dir, resume, force)
    if resume:
        _resume_from(run_dir, spec, announce)
    # A resumed run continues from its own checkpoint; its frozen reference copy is still the starting model's.
    post = spec.post_training
    init = check_init_from(spec) if not resume or (getattr(post, "reference", None) == "copy") else None
    if post is not None:
        tokenizer = _fine_tune_tokenizer(spec, run_dir, resume, init)
        check_data(spec)
        return None if dry_run else _prepare_post_training(spec, run_dir, resume, init, planned, tokenizer, force,
                                                           announce)
    loaded = _pretraining_tokenizer(spec, run_dir, resume, init)
    check_data(spec)
    if dry_run:
        return None

    data = pretraining_data(spec, announce, loaded, run_dir / "tokenizer.json")
    tokenizer_path = data.tokenizer_file if loaded is None else loaded[1]
    _announce_epochs(spec, data, announce)

    run_dir.mkdir(parents=True, exist_ok=True)
    # a resumed run keeps the user's edits; --force overwrites files in build/ that llmspec did not write
    build(spec, run_dir / "build", force=force and not resume, keep_edited=resume, planned=planned)
    write_atomic(run_dir / "spec.yaml", dump_spec(spec))
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")
        copy_template_files(tokenizer_path.parent, run_dir)  # a base's chat template travels with its tokenizer
    job = Job(spec, run_dir, data.prepared, resume, init.weights.resolve() if init else None, planned)
    write_atomic(run_dir / "job.json", json.dumps(job.to_json(), indent=2))  # what launched workers read
    return job


def pretraining_data(spec: Spec, announce: Callable[[str], None] = _quiet,
                     loaded: tuple[Tokenizer, Path | None] | None = None, own: Path | None = None) -> PreparedData:
    """A pretraining spec's data step (what ``llmspec prepare`` runs alone): its tokenizer (``loaded``: the one
    ``_pretraining_tokenizer`` found, whose file is ``own`` where it has none; else the spec's own or one trained
    on a sample), the token shards, with a progress line."""
    if spec.post_training is not None:
        raise LLMSpecError(f"{spec.name}: a fine-tune (post_training) prepares its records when it runs; "
                           "llmspec prepare is the data step of pretraining")
    if loaded is None:
        loaded = _pretraining_tokenizer(spec, Path("."), False, check_init_from(spec))
    check_data(spec)
    vocab = spec.data.tokenizer.vocab_size or spec.model.vocab_size
    given = None if loaded is None else (loaded[0], loaded[1] or own)
    with ProgressLine(announce) as progress:
        return prepare_data(spec.data, vocab, given, cache_dir(), announce, progress)


def _announce_epochs(spec: Spec, data, announce: Callable[[str], None]) -> None:
    """The passes the run makes over each source's training tokens (a mixture draws each by weight)."""
    tr = spec.training
    rows = report(data, tr.steps * tr.global_batch_size, tr.seq_len)["sources"]
    said = ", ".join(f"{row['path']} {row['epochs']:.3g}" for row in rows)
    announce(f"data: {sum(r['tokens'] for r in rows):,} tokens; epochs over each source's training split: {said}")


def _pretraining_tokenizer(spec: Spec, run_dir: Path, resume: bool, init: InitSource | None
                           ) -> tuple[Tokenizer, Path | None] | None:
    """The tokenizer a pretraining run reads, loaded and checked against the model, with the file to copy into
    RUN_DIR (None: it is there); None when one is trained from the corpus."""
    if resume and (run_dir / "tokenizer.json").is_file():  # the run's own tokenizer: its ids are the run's
        return load_tokenizer(run_dir / "tokenizer.json", spec.model.vocab_size), None
    if spec.data.tokenizer.path:
        path = Path(spec.data.tokenizer.path).expanduser()
        return load_tokenizer(path, spec.model.vocab_size), path
    if init is not None and init.tokenizer is not None:  # the ids the initial weights learned
        return load_tokenizer(init.tokenizer, spec.model.vocab_size), init.tokenizer
    return None


def _fine_tune_tokenizer(spec: Spec, run_dir: Path, resume: bool, init: InitSource | None
                         ) -> tuple[Tokenizer, Path, ChatTemplate, bool]:
    """A fine-tune's tokenizer (the base's: its ids are the ones the weights learned), loaded and checked, with its
    file, its chat template, and whether the token that ends a response was added to it."""
    if resume:
        tokenizer_path = run_dir / "tokenizer.json"
    elif spec.data.tokenizer.path:
        tokenizer_path = Path(spec.data.tokenizer.path).expanduser()
    elif init is not None and init.tokenizer is not None:
        tokenizer_path = init.tokenizer
    else:
        raise LLMSpecError("data.tokenizer.path: a fine-tune needs the tokenizer its base learned; "
                           "training.init_from has none (set data.tokenizer.path)")
    tokenizer = load_tokenizer(tokenizer_path, spec.model.vocab_size, end=None)
    template = ChatTemplate.beside(tokenizer_path)
    added = with_end_token(tokenizer, template, tokenizer_path, spec.model.vocab_size)
    return tokenizer, tokenizer_path, template, added


def _prepare_post_training(spec: Spec, run_dir: Path, resume: bool, init: InitSource | None, planned: Plan,
                           loaded: tuple[Tokenizer, Path, ChatTemplate, bool], force: bool = False,
                           announce: Callable[[str], None] = _quiet) -> Job:
    """RUN_DIR for a fine-tune: the base's tokenizer (its ids are the ones the weights learned), and the records in
    run_dir/data/ as its method trains on them (train, val; held_out prompts with answers where there are some)."""
    tokenizer, tokenizer_path, template, added = loaded
    method: PostTrainingMethod = method_for(spec)  # which records it reads and holds out, the files it writes
    corpus = spec.data.corpus
    if corpus == BUILTIN:
        train, val, source = task_records("train"), task_records("held_out"), "the built-in task set"
    else:
        paths = [corpus] if isinstance(corpus, str) else corpus
        announce("data: reading data.corpus")
        records = [r for path in paths for r in method.read_records(Path(path))]
        split = len(records) - max(1, int(len(records) * spec.data.val_fraction))
        train, val, source = records[:split], records[split:], "data.corpus"
    announce(f"data: tokenising {len(train) + len(val):,} records")
    held_out = method.held_out(val, builtin=corpus == BUILTIN)
    files = method.data_files(train, val, held_out, tokenizer, template, source, run_dir / "data")
    return _finish(spec, run_dir, resume, init, (tokenizer if added else None, tokenizer_path), files, planned,
                   force)


def with_end_token(tokenizer, template: ChatTemplate, source: Path, model_vocab: int) -> bool:
    """Make sure the tokenizer holds the token that ends a response; whether it was added. A base's chat template
    names its own (it must be there); the default template's <|endoftext|> is added as a special token when the
    base lacks it (a new id the fine-tune learns, which the model's vocabulary must have room for)."""
    if tokenizer.token_to_id(template.end) is not None:
        return False
    if not template.is_default:
        raise DataError(f"data.tokenizer.path: {source} has no {template.end} token (its chat template's eos_token)")
    if tokenizer.get_vocab_size() + 1 > model_vocab:
        raise DataError(f"data.tokenizer.path: {source} has no {template.end} token and model.vocab_size "
                        f"{model_vocab} leaves no room to add it")
    tokenizer.add_special_tokens([template.end])
    return True


def _finish(spec: Spec, run_dir: Path, resume: bool, init: InitSource | None, tokenizer: tuple[object | None, Path],
            files: dict[str, list], planned: Plan, force: bool = False) -> Job:
    """The rest of a fine-tune's RUN_DIR: data files, build/, spec.yaml, the tokenizer (with the token its
    template ends responses with) and its chat template files, and job.json."""
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        write_atomic(data / name, json.dumps(content))
    build(spec, run_dir / "build", force=force and not resume, keep_edited=resume, planned=planned)
    write_atomic(run_dir / "spec.yaml", dump_spec(spec))
    if not resume:
        changed, source = tokenizer  # the base's file as it is, unless a token was added
        if changed is None:
            shutil.copyfile(source, run_dir / "tokenizer.json")
        else:
            write_atomic(run_dir / "tokenizer.json", changed.to_str())
        copy_template_files(source.parent, run_dir)  # the base's chat template travels with its tokenizer
    job = Job(spec, run_dir, None, resume, init.weights.resolve() if init else None, planned)
    write_atomic(run_dir / "job.json", json.dumps(job.to_json(), indent=2))
    return job


def load_job(run_dir: Path) -> Job:
    """The job ``prepare`` laid out in ``run_dir`` (for processes started by a launcher)."""
    data = json.loads((run_dir / "job.json").read_text())
    spec = parse_spec((run_dir / "spec.yaml").read_text(), source=str(run_dir / "spec.yaml"))
    shards = Prepared(Path(data["tokens"])) if "tokens" in data else None
    init = data.get("init_weights")
    return Job(spec, run_dir, shards, data["resume"], Path(init) if init else None)
