# make install: a local .venv with the package (editable) and its dev extras
# make demo:    summary of a shipped model, then verify it around a shipped input
# make test:    the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/verify models/digits_mlp.onnx
	$(BIN)/verify models/digits_mlp.onnx --eps 0.01 --input models/digits_sample0.npy --label 1
	$(BIN)/verify models/digits_cnn_maxpool.onnx --eps 0.01 --dataset models/digits_samples.npz --timeout 20

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) build *.egg-info
