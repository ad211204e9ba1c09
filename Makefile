# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
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

clean:
	rm -rf $(VENV) demo-out
