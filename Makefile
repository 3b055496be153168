PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: demo test lint fuzz install clean default-supernet

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(PIP) install --quiet -c constraints.txt -e ".[openvino,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deploy-nas demo --out $(OUT)

# Two pytest-xdist workers (one per core here); TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The fuzz suite at full size: 1,000 random cases per input kind and family (`make test` runs 50, a third of
# that for the non-default families, the same ones every time).
fuzz: $(STAMP)
	FUZZ_EXAMPLES=1000 FUZZ_RANDOM=1 $(PY) -m pytest -q -m slow tests/fuzz

# Rebuild the embedded default supernet shipped in deploy_nas/assets: data-parallel over two processes of one
# thread each (torchrun, gloo), so that the weights come out bit-identical on one CPU (another CPU's kernels round
# differently and train other weights). Measured 2026-12-07 on 2-core hosts: 4.4 and 6.8 min of training (one
# process of one thread, the recipe until then: 7.9 min on the host that took 4.4). It trains into
# out/default-supernet and replaces the shipped one only when training succeeded.
default-supernet: $(STAMP)
	rm -rf out/default-supernet
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m deploy_nas.train \
		--space autoformer-demo --epochs 12 --num-random 1 --shift 2 --warmup-epochs 1 --no-save-state --seed 0 \
		--out out/default-supernet
	rm -rf deploy_nas/assets/default_supernet
	mv out/default-supernet deploy_nas/assets/default_supernet
	rm -f deploy_nas/assets/default_supernet/.deploy-nas  # the package's data, not a directory a command may replace

clean:
	rm -rf $(VENV) out build *.egg-info
