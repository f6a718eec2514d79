# Every target bootstraps .venv itself: it is (re)installed when missing or when pyproject.toml or
# constraints.txt changed since the last install (tracked by a stamp file), and skipped otherwise.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.neuroattn-installed
DEMO_OUT ?= demo_output
APP_PORT ?= 8501
PYTEST_WORKERS ?= 2

.PHONY: install browser demo test lint app bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,app]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/neuroattn demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .

# Headless Chromium for the end-to-end app test (Debian packages; nothing is downloaded by the test itself).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "warning: could not install chromium + chromium-driver; the browser test will be skipped"; fi

test: lint browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --timeout 600 -q

app: $(STAMP)
	$(BIN)/neuroattn app --port $(APP_PORT)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out bench_results

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench_results .pytest_cache .ruff_cache
