# The two commands of the README: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
TRITON_HOME := .triton
TOOLS := .tools
BIN := $(VENV)/bin

.PHONY: install demo test lint models fleet-up fleet-down clean

PROTOS := $(wildcard protos/tgw/*/v1/*.proto)
GENERATED := gateway/_protos/.generated

install: $(VENV)/.installed $(GENERATED) $(TRITON_HOME)/.installed $(BIN)/tgw-edge

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The typed control protocol, compiled for Python with grpcio-tools (tgw-edge compiles it in
# its build script). Generated, never edited: gateway/_protos is ignored by git.
$(GENERATED): $(VENV)/.installed $(PROTOS)
	rm -rf gateway/_protos
	mkdir -p gateway/_protos
	$(BIN)/python -m grpc_tools.protoc -Igateway/_protos=protos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch $@

$(TRITON_HOME)/.installed: $(VENV)/.installed scripts/install_triton.sh
	scripts/install_triton.sh $(BIN)/python $(TRITON_HOME)

$(BIN)/tgw-edge: $(VENV)/.installed scripts/build_edge.sh edge/Cargo.toml edge/Cargo.lock edge/build.rs $(PROTOS) $(wildcard edge/src/*.rs edge/src/*/*.rs)
	scripts/build_edge.sh $(BIN)

# Tools only the tests use: a real DNS server and a real Consul agent for the discovery and
# shared-state tests.
$(TOOLS)/.installed: scripts/install_dnsmasq.sh scripts/install_consul.sh
	scripts/install_dnsmasq.sh $(TOOLS)
	scripts/install_consul.sh $(TOOLS)
	touch $@

demo: install
	$(BIN)/triton-gateway demo

test: install $(TOOLS)/.installed
	$(BIN)/ruff check gateway tests load_tests scripts
	$(BIN)/mypy
	cd edge && PATH="$$HOME/.cargo/bin:$$PATH" cargo fmt --check
	cd edge && PATH="$$HOME/.cargo/bin:$$PATH" cargo clippy --release --locked --quiet --all-targets -- -D warnings
	cd edge && PATH="$$HOME/.cargo/bin:$$PATH" cargo test --release --locked --quiet
	$(BIN)/pytest

models: $(VENV)/.installed
	$(BIN)/python scripts/generate_models.py

fleet-up: install
	$(BIN)/triton-gateway fleet up

fleet-down:
	$(BIN)/triton-gateway fleet down

clean:
	rm -rf $(VENV) $(TRITON_HOME) $(TOOLS) .fleet
