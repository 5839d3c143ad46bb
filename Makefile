# Everything a fresh machine needs goes through `setup`; `run` and `test` depend on it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TRITON_HOME := .triton
TRITON_STAMP := $(TRITON_HOME)/.setup-stamp
TORCH_VERSION := 2.13.0
RUN_MODEL ?= toy://musicgen

.PHONY: setup system-deps run demo test test-fast lint format proto bench lock clean

setup: system-deps $(STAMP) $(TRITON_STAMP)

# The listening page is tested in Debian's Chromium (Playwright cannot download a browser here), and
# tritonserver's Python backend embeds Debian's libpython3.11, so its environment is a venv of that Python.
system-deps:
	@{ command -v chromium && test -f /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 \
		&& /usr/bin/python3.11 -c 'import ensurepip'; } >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends \
			chromium libpython3.11 python3.11-venv; }

# torch first: the CPU wheel is found by version; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# tritonserver (the nvidia-pytriton wheel's binary, not its Python API) for the Triton runtime and its tests
$(TRITON_STAMP): $(STAMP) musicrl/triton/install.py
	$(PY) -m musicrl.triton.install --home $(TRITON_HOME)
	touch $@

# nats-server, the generator, the recorder and the gateway on loopback; the page at http://127.0.0.1:8000/
run: setup
	$(PY) -m musicrl up --model-uri '$(RUN_MODEL)'

# the closed loop on this machine: simulated listeners, the pipeline under kfp.local, the canary; a report
# in out/demo/report.html (DEMO_FLAGS, e.g. --taste crescendo --rounds 2)
demo: setup
	$(PY) -m musicrl demo $(DEMO_FLAGS)

# lint is part of test, so CI (which runs `make test`) enforces it. Two workers, one per core of the CI
# machine; --dist loadfile keeps each file on one worker, so a module's fixtures (trained models, a
# running platform) are built once. The tests run torch on one thread each (tests/conftest.py).
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m 'not slow'

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: setup
	$(PY) -m musicrl.proto_codegen

# Every benchmark that runs on a CPU, each printing its ratios against a baseline of the same run (the open-loop
# load test is the longest). bench/gpu_check.sh is the GPU's; bench/preference_learning.py takes its cells as flags.
bench: setup
	$(PY) bench/generation_throughput.py
	$(PY) bench/generation_load.py
	$(PY) bench/sampler_cost.py
	$(PY) bench/triton_throughput.py
	$(PY) bench/feedback_throughput.py
	$(PY) bench/recorder_throughput.py
	$(PY) bench/reward_throughput.py
	$(PY) bench/preference_data_throughput.py
	$(PY) bench/rl_throughput.py
	$(PY) bench/rollout_decisions.py

# Re-pin the transitive set after changing pyproject.toml (torch is pinned above, not here).
lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -v -i '^torch==' > constraints.txt

clean:
	rm -rf $(VENV) $(TRITON_HOME) .pytest_cache .ruff_cache .mypy_cache
