# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install dist wheelhouse clean

# Python 3.10+ is checked before the .venv is made: pip's "requires a different Python" came only after a .venv of
# the old Python existed, and `venv` over it keeps that interpreter, so a retry with PYTHON=python3.12 failed alike.
# A .venv whose python is too old or gone (a removed pyenv version) is made again.
NEEDS_310 := import sys; sys.exit(0 if sys.version_info >= (3, 10) else "polymodal needs Python 3.10 or newer; %s is %s: run make again with PYTHON=python3.12 (any 3.10+)" % (sys.argv[1], sys.version.split()[0]))

$(STAMP): pyproject.toml
	@$(PYTHON) -c '$(NEEDS_310)' '$(PYTHON)'
	@if [ -e $(VENV) ] && ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then \
		echo "$(VENV) holds an older or missing Python: making it again"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo,train,serve,onnx,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m polymodal.demo

# two workers: 1.5x faster on 2 cores (tests wait on subprocesses, servers and files as much as they compute)
test: $(STAMP)
	$(PY) -m pytest -q -n 2

# A release: dist/ holds the sdist and the wheel built from it (`pip install dist/polymodal-*.whl` elsewhere). The
# wheel comes from the unpacked sdist, not from this tree: `pip wheel .` reuses build/lib, so a module deleted since
# an earlier build still shipped. No build isolation: .venv's build and setuptools>=77 (the test extra; a new venv's
# own setuptools 65 cannot read pyproject) build it, so a release needs no registry once .venv is made, and uses
# the setuptools that the suite's wheel test built with.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation

# For a machine with no network: wheelhouse/ gets polymodal's wheel and every wheel it needs with EXTRAS; carry it
# over and `pip install --no-index --find-links wheelhouse 'polymodal[EXTRAS]'` (docs/install.md, "Installing without network").
# torch comes from PyTorch's CPU index alone, then is named by its file: PyPI's Linux torch bundles CUDA (GBs), and
# an index that only adds the CPU one falls back to that build, unseen, when the CPU index cannot be reached.
# Wheels only: the offline machine builds nothing. They fit this machine's OS, CPU and Python unless TARGET_ARGS names
# another (pip download's --python-version, --platform).
EXTRAS ?= demo,train,serve,onnx
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml)
wheelhouse: dist
	rm -rf wheelhouse
	$(PY) -m pip download --only-binary=:all: $(TARGET_ARGS) -d wheelhouse --no-deps --index-url $(TORCH_CPU_INDEX) '$(TORCH_PIN)'
	$(PY) -m pip download --only-binary=:all: $(TARGET_ARGS) -d wheelhouse wheelhouse/torch-*.whl "$$(ls dist/*.whl)[$(EXTRAS)]"
	@du -sh wheelhouse

clean:
	rm -rf $(VENV) demo-out build dist wheelhouse
