# make demo   fresh machine -> venv, install, synthetic specimens, stages 2-5 on CPU
# make test   install and run the fast test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := work/demo

.PHONY: install demo test test-slow bench clean
install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Stage 3 in the demo is a CPU-sized run (~5.5 min on 2 cores) with the short-run recipe of
# benchmarks/probe_common.py (CPU_RECIPE): Adam, T=0.2, crops >= 30 %, no blur.
demo: install
	$(PY) -m wingclr.demo --output $(DEMO)/specimens-set --n 600 --size 96
	$(PY) 2-create_dataset/create_dataset.py --input $(DEMO)/specimens-set/clusters --output $(DEMO)/2-dataset
	$(PY) 3-training/train.py --data $(DEMO)/2-dataset --output $(DEMO)/3-training \
		--backbone resnet18 --pretrained none --input-size 64 --batch-size 64 --epochs 45 \
		--temperature 0.2 --optimizer adam --lr 2e-3 --min-scale 0.3 --blur-prob 0
	$(PY) 4-embed/embed.py --training-dir $(DEMO)/3-training --data $(DEMO)/2-dataset --output $(DEMO)/4-embeddings
	$(PY) 5-evaluation/evaluate.py --embeddings $(DEMO)/4-embeddings --output $(DEMO)/5-evaluation \
		--baselines pixel,random
	@echo "demo done: CSVs in $(DEMO)/4-embeddings/*/ and $(DEMO)/5-evaluation/evaluation.csv, plots next to them"

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow || test $$? -eq 5  # 5: no test is marked slow

bench: install
	$(PY) benchmarks/demo_probe.py

clean:
	rm -rf work
