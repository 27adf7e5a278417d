# producers/clients.mk — the Node and Python clients (producers/node,
# producers/python): their dependencies, installed from lock files, and
# their tests.
#
# `make clients` installs what the clients need: `npm ci` from
# producers/node/package-lock.json then the build (types generated from
# schemas/, tsc), and a venv at $(BUILD)/pyclient with
# producers/python/requirements.lock (a venv because Debian's python3
# refuses pip, PEP 668). Both come from the npm registry and PyPI; a second
# run installs nothing (stamps; npm and pip reuse their caches when offline).
# `make clients-test` runs each client's schema-vector tests (and
# mypy --strict on the Python package; tsc is strict in the build); the
# end-to-end test (tests/e2e/test_clients.py, part of `make e2e`) drives
# both through a real broker, database and sbx-worker.
PYCLIENT := $(BUILD)/pyclient
NODE_CLIENT := producers/node

$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	@touch $@

$(NODE_CLIENT)/dist/index.js: $(NODE_CLIENT)/node_modules/.package-lock.json \
    $(wildcard $(NODE_CLIENT)/src/*.ts) $(NODE_CLIENT)/scripts/build.mjs \
    schemas/job.v1.schema.json schemas/run.v1.schema.json schemas/log.v1.schema.json \
    schemas/session.v1.schema.json
	cd $(NODE_CLIENT) && npm run --silent build

$(PYCLIENT)/.stamp: producers/python/requirements.lock
	@rm -rf $(PYCLIENT)
	python3 -m venv $(PYCLIENT)
	$(PYCLIENT)/bin/pip install -q --disable-pip-version-check --prefer-binary \
	    -r producers/python/requirements.lock
	@touch $@

.PHONY: clients clients-test
clients: $(NODE_CLIENT)/dist/index.js $(PYCLIENT)/.stamp

clients-test: clients
	cd $(NODE_CLIENT) && node --test test/vectors.test.mjs
	PYTHONPATH=producers/python/src $(PYCLIENT)/bin/python -m pytest -q -p no:cacheprovider \
	    producers/python/tests
	MYPY_CACHE_DIR=$(abspath $(BUILD))/mypy-cache $(PYCLIENT)/bin/python -m mypy --strict \
	    producers/python/src/sbx_client

test: clients-test
e2e: clients

# The Node client's build products live beside its sources (the package's
# own layout); node_modules stays, as tests/schema's does.
clean: clients-clean
.PHONY: clients-clean
clients-clean:
	rm -rf $(NODE_CLIENT)/dist $(NODE_CLIENT)/src/generated
