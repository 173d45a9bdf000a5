# Two entry points on a fresh machine: `make run` and `make test` (`make test-fast`: the unit tier). Each creates .venv
# in the repo root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run post-train test test-fast ssh-tools wheel-check lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build. Installing it together with (or after) deepspeed would pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/llmspec run

# The post-training chain on the built-in task set, from the `tiny` run (trained first when runs/tiny is missing).
post-train: $(STAMP)
	@test -d runs/tiny/checkpoints || $(BIN)/llmspec run
	$(BIN)/llmspec run tiny-sft
	$(BIN)/llmspec run tiny-lora
	$(BIN)/llmspec run tiny-reward
	$(BIN)/llmspec run tiny-dpo
	$(BIN)/llmspec run tiny-grpo
	$(BIN)/llmspec run tiny-ppo

# DeepSpeed JIT-builds its CPU ops on first use (30-60 s each): build them once with the venv, where the tests
# look for them, with the venv's ninja as the tests use it (tests/conftest.py), so that no test pays for a compiler.
OPS := $(VENV)/torch-extensions/.built
$(OPS): $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(CURDIR)/$(VENV)/torch-extensions \
		$(BIN)/python -c \
		"from deepspeed.accelerator import get_accelerator as a; \
		[a().create_op_builder(n).load() for n in ('CPUAdamBuilder', 'FusedAdamBuilder', 'ShareMemCommBuilder')]"
	touch $(OPS)

# Two tiers (pyproject.toml's markers): `make test-fast` runs the unit tests (under 5 minutes on 2 cores), `make test`
# runs everything, then trains from the installed wheel. Both lint first: a lint error fails before any test runs.
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --durations=20

# The two-node test (tests/test_multinode.py) starts sshd on 127.0.0.1 and 127.0.0.2 and launches through pdsh:
# installed where this machine allows it (root, apt-get); elsewhere that test says why it skips.
ssh-tools:
	@if ! { command -v sshd || test -x /usr/sbin/sshd; } >/dev/null || ! command -v pdsh >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server pdsh; } >/dev/null \
				|| echo "ssh-tools: apt-get could not install openssh-server and pdsh; the two-node test will skip"; \
		else echo "ssh-tools: no sshd or pdsh, and no root apt-get to install them; the two-node test will skip"; fi; \
	fi

test: $(STAMP) $(OPS) ssh-tools
	$(MAKE) --no-print-directory lint
	$(PYTEST) tests
	$(MAKE) --no-print-directory wheel-check

test-fast: $(STAMP) $(OPS)
	$(MAKE) --no-print-directory lint
	$(PYTEST) -m "not integration" tests

# The package as a user gets it: a wheel, installed into a fresh environment, run from outside the checkout.
SMOKE := build/wheel-check
wheel-check: $(STAMP)
	rm -rf $(SMOKE) && mkdir -p $(SMOKE)
	$(BIN)/pip wheel . --no-deps --no-build-isolation --quiet -w $(SMOKE)/dist
	$(PYTHON) -m venv $(SMOKE)/venv
	$(SMOKE)/venv/bin/pip install --quiet torch==2.13.0
	$(SMOKE)/venv/bin/pip install --quiet $(SMOKE)/dist/llmspec-*.whl
	cd $$(mktemp -d) && HF_HUB_OFFLINE=1 $(CURDIR)/$(SMOKE)/venv/bin/llmspec run tiny --out wheel-run \
		--set training.max_steps=3 --set training.log_interval=1 --set training.eval_interval=3 \
		--set training.checkpoint_interval=3 && test -s wheel-run/checkpoints/step-00000003.pt \
		&& test -s wheel-run/samples.txt && echo "wheel-check: the installed wheel trained tiny from $$PWD"

lint: $(STAMP)
	$(BIN)/ruff check llmspec backends tests benchmarks

docs: $(STAMP)
	$(BIN)/python -m llmspec.planner.codegen
	$(BIN)/python -m llmspec.cli.docs
	$(BIN)/python benchmarks/calibrate.py --write > /dev/null

bench: $(STAMP)
	$(BIN)/python benchmarks/plan_latency.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
