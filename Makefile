# Two set-up commands: `make run` (the app) and `make test` (the whole suite).
# Both create .venv and install from requirements*.txt on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test install install-dev phantom chromium bench screenshots clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The default dataset (a synthetic head-CT phantom written as DICOM at 128 px, then imported) and its
# label-free pretrained encoder: one chain of background jobs (ich/firstrun.py). `make run` queues
# what is missing and serves the app at once; Home shows the chain's progress. Repeating it is safe:
# finished steps are skipped and interrupted ones resume. `make phantom` waits for the chain.
phantom: $(VENV)/.installed
	$(PY) -m ich firstrun --wait

run: $(VENV)/.installed
	$(PY) -m ich firstrun
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

# Debian's chromium for the real-browser test (browser downloads are impossible here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will fail"; }

test: $(VENV)/.installed-dev chromium
	$(PY) -m pytest tests -p no:cacheprovider -q -ra

bench: $(VENV)/.installed-dev
	$(PY) -m ich bench --out bench.json

# The README's screenshots: the app in chromium on the default phantom and its quick study.
screenshots: $(VENV)/.installed-dev chromium phantom
	@test -f data/studies/quick/study.json || $(PY) -m ich study --preset quick --out data/studies/quick
	$(PY) tests/readme_screenshots.py

clean-venv:
	rm -rf $(VENV)
