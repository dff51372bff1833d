# altlens: two commands on a fresh machine -- `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.altlens-installed
DEMO_WS ?= demo-workspace

.PHONY: install peers demo test browser clean bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# Peer tools the tests check altlens against, with their real output (kept out of altlens's own dependencies).
PEERS := $(VENV)/peers
$(PEERS)/.installed: $(STAMP) Makefile
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(PEERS) clip-retrieval==2.45.0 all_clip==1.3.0 fire==0.7.1 \
	  termcolor==3.3.0 clip-anytorch==2.6.0 embedding-reader==1.8.1 autofaiss==2.18.0 'setuptools<70'
	touch $@

peers: $(PEERS)/.installed

# Debian's Chromium for the browser tests (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

demo: install
	$(VENV)/bin/altlens demo --workspace $(DEMO_WS)

test: install peers browser
	$(PY) -m pytest

bench: install
	$(PY) bench/index_throughput.py

clean:
	rm -rf $(DEMO_WS) .pytest_cache
