# Amphi: `make run` (demo you can open in a browser) and `make test` (the whole suite).
# Both set up what they need on a fresh machine: Debian packages (ffmpeg, chromium) with
# apt-get when missing, Python packages into .venv, hls.js and uPlot from npm into node_modules (and whip-whep, a WHIP client the tests use).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
DATA ?= data
APT_PACKAGES := ffmpeg chromium espeak-ng wrk icecast2 nginx libnginx-mod-stream libnginx-mod-http-js varnish varnish-vmod-digest varnish-modules \
	redis-server iptables coturn iproute2 curl

.PHONY: setup system run test wheel bench bench-small bench-side-by-side clean

setup: system $(VENV)/.installed node_modules/.installed

system:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	[ -x /usr/bin/icecast2 ] || missing="$$missing icecast2"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$$missing libnginx-mod-stream"; \
	[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing="$$missing libnginx-mod-http-js"; \
	[ -x /usr/sbin/varnishd ] || missing="$$missing varnish"; \
	[ -e /usr/lib/x86_64-linux-gnu/varnish/vmods/libvmod_digest.so ] || missing="$$missing varnish-vmod-digest"; \
	[ -e /usr/lib/x86_64-linux-gnu/varnish/vmods/libvmod_vsthrottle.so ] || missing="$$missing varnish-modules"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	[ -x /usr/sbin/iptables ] || missing="$$missing iptables"; \
	command -v turnserver >/dev/null || missing="$$missing coturn"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		case "$$missing" in *coturn*) if command -v systemctl >/dev/null; then \
			$$SUDO systemctl disable --now coturn >/dev/null 2>&1 || true; \
			echo "coturn: its system service (default config, no credentials) is stopped and disabled; the tests start their own"; \
		fi;; esac; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: setup
	@echo "Starting Amphi with a demo Space; open the URL it prints (Ctrl-C to stop)."
	$(VENV)/bin/amphi serve --host $(HOST) --port $(PORT) --data-dir $(DATA) --demo

# two workers for the rest, then the tests marked serial (timing that a neighbour would disturb) alone
test: setup
	@$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial"; parallel=$$?; \
	$(PY) -m pytest -q -m serial; alone=$$?; \
	[ $$parallel -eq 0 ] && [ $$alone -eq 0 ]

# the installable package (docs/install.md): dist/amphi-*.tar.gz, then dist/amphi-*.whl built from it, both
# carrying the pages' npm files; with the pinned setuptools the test extra put in .venv (no build isolation)
wheel: $(VENV)/.installed node_modules/.installed
	$(PY) -m build --no-isolation --outdir dist .

bench: setup
	$(PY) bench/glass_to_glass.py
	$(PY) bench/pipeline_cpu.py
	$(PY) bench/surge.py
	$(PY) bench/join_rate.py
	$(PY) bench/mouth_to_ear.py
	$(PY) bench/stage_cpu.py
	$(PY) bench/sound.py

bench-small: setup
	PYTHONPATH=$(CURDIR)/src $(PY) -m pytest -q tests/bench

bench-side-by-side: setup
	$(PY) bench/side_by_side.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache build dist
