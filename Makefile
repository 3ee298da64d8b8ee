# Each target creates .venv itself when missing; only python3 is needed on the machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test bench lint format clean cross-toolchain

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests use when missing: the aarch64 cross compilers (the rpi4-tvm profile,
# linux-aarch64 bundles), qemu-user (runs those bundles), cmake and a JDK (bundles, the JNI bridge).
DEB_TOOLS := aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu aarch64-linux-gnu-g++:g++-aarch64-linux-gnu \
	qemu-aarch64:qemu-user cmake:cmake javac:openjdk-17-jdk-headless
cross-toolchain:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; fi

demo: setup
	$(BIN)/edgeformer compile efficientformer_l1 --profile host-ort -o out/efficientformer_l1-host-ort
	$(BIN)/edgeformer profile out/efficientformer_l1-host-ort --ops

test: setup cross-toolchain
	$(BIN)/python -m pytest -q

# Side-by-side measurements (not tests); each writes bench-results/<name>.json.
BENCHES ?= host_latency passes targets target_matrix tvm_tuning train_tiny zoo quantize int8_pool_mixer attention streaming bundle
bench: setup cross-toolchain
	@set -e; for b in $(BENCHES); do \
	  if [ -f benchmarks/$$b.py ]; then echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py; fi; \
	done

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf out build dist *.egg-info .pytest_cache
