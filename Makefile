# Two commands for a newcomer: `make demo` and `make test`.
# Each creates or refreshes .venv (when pyproject.toml changed) and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench reliability clean venv

venv: $(STAMP)

# The editable install is a tree of links (strict mode): one more module needs a re-link,
# so the list of package files is part of what the stamp depends on.
PACKAGE_FILES := $(VENV)/.package-files
$(shell mkdir -p $(VENV) && find __init__.py py.typed core tasks workers \
	-name '*.py' -o -name '*.lua' -o -name py.typed | sort > $(PACKAGE_FILES).new && \
	(cmp -s $(PACKAGE_FILES).new $(PACKAGE_FILES) || mv $(PACKAGE_FILES).new $(PACKAGE_FILES)); \
	rm -f $(PACKAGE_FILES).new)

$(STAMP): pyproject.toml $(PACKAGE_FILES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tiercel demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy -m tiercel -p tiercel.core -p tiercel.tasks -p tiercel.workers

test: $(STAMP) lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

reliability: $(STAMP)
	$(BIN)/pytest tests/reliability -p no:cacheprovider

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache .tiercel
