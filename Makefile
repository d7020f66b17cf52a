# `make demo` and `make test` each build what they need first: .venv (the project) and .venv-dvc
# (the DVC CLI, kept apart because its hydra pins antlr4 4.9 while Dagster's asset selection needs 4.13).
PYTHON ?= python3.11
VENV := .venv
DVC_VENV := .venv-dvc
PIP := $(VENV)/bin/pip
CONSTRAINTS := requirements/constraints.txt
DVC_LOCK := requirements/dvc-tool.txt
export MAI_ROOT := $(CURDIR)
export DAGSTER_HOME ?= $(CURDIR)/.mai/dagster
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install system-tools demo test ui lint bench dvc-status repro lock clean-state

install: $(VENV)/.installed $(DVC_VENV)/.installed system-tools

# The speech demo's teacher: Debian's flite when it can be installed (root + apt), else the code falls
# back to espeak-ng from PyPI with a warning. Never fatal.
system-tools:
	@command -v flite >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite >/dev/null 2>&1)) \
		|| echo "note: flite not installed; the speech demo will use espeak-ng (see README)"; }
# PostgreSQL for the production-stack tests (Dagster storage, MLflow backend), started by the tests.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1)) \
		|| echo "note: PostgreSQL not installed; tests/test_production_stack.py will fail (make system-tools as root)"; }
# A single-node Slurm cluster (munged, slurmctld, slurmd) that tests/test_slurm.py starts itself.
	@[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1)) \
		|| echo "note: Slurm not installed; tests/test_slurm.py will fail (make system-tools as root)"; }
# Debian's Chromium (and its driver) for the browser tests of the UIs; Playwright drives this one.
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) \
		|| echo "note: Chromium not installed; tests/test_ui_browser.py will fail (make system-tools as root)"; }

# torch goes first, pinned: with no torch present, a dependency could otherwise pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	$(PIP) install -qq torch==2.13.0
	$(PIP) install -qq -c $(CONSTRAINTS) -e ".[dev]"
# dagster-postgres has no release for dagster 1.13.28 (its latest, 0.29.27, pins dagster==1.13.27):
# that one, pinned in the constraints, without its dependency pin; the production-stack tests run it.
	$(PIP) install -qq --no-deps -c $(CONSTRAINTS) dagster-postgres
# numba compiles librosa's DTW (the TTS evaluation's MCD) on first use: done here, into its cache.
	$(VENV)/bin/python -c "from mai_models.eval.tts_metrics import warm_analysis_cache; warm_analysis_cache()"
	touch $@

$(DVC_VENV)/.installed: $(DVC_LOCK)
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install -qq --upgrade pip
	$(DVC_VENV)/bin/pip install -qq -r $(DVC_LOCK)
	touch $@

demo: install
	$(VENV)/bin/mai demo

test: install
	$(VENV)/bin/python -m pytest -q

ui: install
	$(VENV)/bin/mai ui

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(VENV)/bin/mai bench tokenize
	$(VENV)/bin/mai bench tts-rtf

dvc-status: install
	$(VENV)/bin/mai dvc status

repro: install
	$(VENV)/bin/mai dvc repro

# Regenerate the lock files from the current environments.
lock:
	$(PIP) freeze --exclude-editable | grep -v '^torch==' > $(CONSTRAINTS)
	echo 'torch==2.13.0' >> $(CONSTRAINTS)
	$(DVC_VENV)/bin/pip freeze > $(DVC_LOCK)

clean-state:
	rm -rf .mai data/raw_documents data/clean_documents data/bpe_tokenizer data/token_shards data/moe_pretrain \
		data/speech_demo_dataset data/speech_corpus data/speech_features data/tts_acoustic data/tts_vocoder \
		data/mai_voice data/hf_export data/lm_evaluation data/tts_evaluation data/arena data/champion data/arena_submission dvc.lock
