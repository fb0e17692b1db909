# hostdev.vfio: developer entry points. `make test` runs every gate and every lab suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/build
# The build tree lives outside the repository (build/ is a symlink to it): inside it, ansible-test would ask
# this repository's git for the file list and see none of the copied files.
BUILD_REAL := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hostdev-vfio/build-$(shell echo '$(CURDIR)' | cksum | cut -d' ' -f1)
COLL := $(BUILD)/ansible_collections/hostdev/vfio
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export PATH := $(BIN):$(PATH)

.PHONY: help venv collection lint ruff yamllint ansible-lint sanity units docs-lint facts test test-static

help:
	@echo "make facts       IOMMU facts of this machine (hostdev.vfio.iommu_facts on localhost)"
	@echo "make test        every quality gate, unit test and lab suite"
	@echo "make lab-up | lab-down | lab-status | lab-ssh HOST=intel | lab-reset HOST=intel"

$(VENV)/.stamp: tests/requirements-dev.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r tests/requirements-dev.txt -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

# ansible-test and ansible need the tree at .../ansible_collections/hostdev/vfio: copy the working tree there.
collection: venv
	@if [ ! -L $(BUILD) ]; then rm -rf $(BUILD); mkdir -p $(BUILD_REAL); ln -sfn $(BUILD_REAL) $(BUILD); fi
	@rm -rf $(COLL) && mkdir -p $(COLL)
	@tar -c --exclude=./.git --exclude=./.venv --exclude=./.venv-sanity --exclude=./.ansible --exclude=./build --exclude=./tests/lab/.state --exclude=./passthrough-report \
	  --exclude='__pycache__' --exclude='.pytest_cache' --exclude='.ruff_cache' --exclude='.hypothesis' . \
	  | tar -x -C $(COLL)

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

yamllint: venv
	$(BIN)/yamllint -s .

ansible-lint: collection
	cd $(COLL) && $(BIN)/ansible-lint --profile production --offline

lint: ruff yamllint ansible-lint

# ansible-test gets a venv of its own (its pinned linters must not meet ansible-lint's), and an offline pip
# bootstrap script in its cache (it would download get-pip.py, which only registries-only machines cannot).
SANITY_VENV := $(CURDIR)/.venv-sanity
ANSIBLE_CORE_PIN := $(shell grep '^ansible-core==' tests/requirements-dev.txt)
$(SANITY_VENV)/.stamp: tests/requirements-dev.txt
	$(PYTHON) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install -q '$(ANSIBLE_CORE_PIN)'
	touch $@

sanity: collection $(SANITY_VENV)/.stamp
	@for v in 24_2 25_3; do f=$(HOME)/.ansible/test/cache/get_pip_$$v.py; \
	  [ -e $$f ] || install -D -m 0644 tests/utils/get_pip_offline.py $$f; done
	cd $(COLL) && $(SANITY_VENV)/bin/ansible-test sanity --python 3.11 --requirements --color no

# Host tools the unit tests run as oracles (kmod's modprobe and depmod, gcc for a test kernel module, GNU cpio and
# the compressors that make initramfs images for the image reader, libvirt's
# virt-xml-validate and the xmllint it runs for the hand-off's <hostdev> elements, Chromium that renders and
# screenshots the report's picture).
UNIT_TOOLS := modprobe:kmod depmod:kmod gcc:gcc virt-xml-validate:libvirt-clients xmllint:libxml2-utils \
  chromium:chromium cpio:cpio gzip:gzip xz:xz-utils bzip2:bzip2 zstd:zstd lz4:lz4
.PHONY: unit-tools
unit-tools:
	@need=""; for pair in $(UNIT_TOOLS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null || need="$$need $${pair##*:}"; done; \
	if [ -n "$$need" ]; then echo "installing$$need (unit-test oracles)"; apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need; fi

units: collection unit-tools
	cd $(COLL) && PYTHONPATH=$(BUILD) $(BIN)/python -m pytest -q -n 2 tests/unit

docs-lint: collection
	$(BIN)/antsibull-docs lint-collection-docs --plugin-docs $(COLL)

facts: collection
	$(BIN)/ansible localhost -c local -m hostdev.vfio.iommu_facts

test-static: lint sanity units docs-lint

# The static gates run while the lab's images build (package downloads and mmdebstrap leave the CPUs idle much of
# the time); apt runs before, alone (unit-tools, lab.py tools). Then the lab suites (lab-test). Each phase prints
# its start time, for the phase times of a run.
STAMP = echo "[make test $$(date +%T)]"
test: venv unit-tools
	@$(STAMP) host packages of the lab
	$(BIN)/python tests/lab/lab.py tools
	@$(STAMP) static gates, beside the lab images; mkdir -p tests/lab/.state; \
	  $(BIN)/python tests/lab/lab.py images > tests/lab/.state/images.log 2>&1 & images=$$!; \
	  $(MAKE) --no-print-directory test-static; static=$$?; \
	  $(STAMP) static gates done "(exit $$static)"; wait $$images; built=$$?; \
	  $(STAMP) lab images done "(exit $$built)"; cat tests/lab/.state/images.log; \
	  [ $$static -eq 0 ] && [ $$built -eq 0 ]
	@$(STAMP) lab suites
	$(MAKE) --no-print-directory lab-test
	@$(STAMP) done

-include tests/lab/lab.mk

.PHONY: bench-facts bench-bind bench-initramfs bench-fleet bench-report demo molecule
bench-facts: collection
	cd $(COLL) && PYTHONPATH=$(BUILD) $(BIN)/python benchmarks/facts.py

# Lab benchmarks and suites: the lab must be up (make lab-up); they take the lab lock like the test suites.
LAB_CFG := ANSIBLE_CONFIG=$(CURDIR)/tests/lab/.state/ansible.cfg
LAB_INV := -i $(CURDIR)/tests/lab/.state/inventory.yml -i $(CURDIR)/tests/lab/sample-inventory

bench-bind: collection
	$(BIN)/python benchmarks/bind.py

# Listing each lab guest's initramfs: the generator's lister against the collection's cpio reader.
bench-initramfs: venv
	$(BIN)/python benchmarks/initramfs_list.py

bench-fleet: collection
	flock /tmp/hostdev-lab.lock $(BIN)/python benchmarks/fleet.py
	cd $(COLL) && PYTHONPATH=$(BUILD) $(BIN)/python benchmarks/report.py

# The report from captures over 50, 200 and 500 hosts (no lab, no host contact); also the last part of bench-fleet.
bench-report: collection
	cd $(COLL) && PYTHONPATH=$(BUILD) $(BIN)/python benchmarks/report.py

# The main job on the built-in default: the lab fleet configured by hostdev.vfio.configure, then the report.
demo: collection
	$(BIN)/python tests/lab/lab.py up
	$(LAB_CFG) flock /tmp/hostdev-lab.lock $(BIN)/ansible-playbook $(LAB_INV) hostdev.vfio.configure \
	  -e passthrough_serial=3 -e passthrough_reboot_ok=true
	$(LAB_CFG) flock /tmp/hostdev-lab.lock $(BIN)/ansible-playbook $(LAB_INV) hostdev.vfio.report \
	  -e passthrough_report_dir=$(CURDIR)/passthrough-report
	@echo "report: $(CURDIR)/passthrough-report/"

# The role in the lab: dry run, converge, idempotence, verify; then removal (docs/role.md). Also the last part of
# `make test` (lab-test).
MOLECULE_TEST = flock /tmp/hostdev-lab.lock $(BIN)/molecule test -s default && \
  flock /tmp/hostdev-lab.lock $(BIN)/molecule test -s cleanup
molecule: collection
	$(BIN)/python tests/lab/lab.py up
	$(MOLECULE_TEST)

# The rollout check alone (extensions/molecule/default/rollout.yml) on a freshly converged fleet. LAB_THROTTLE=25 runs it
# with all guests capped at 25% of one CPU together (a slow machine), to show its result does not depend on speed.
LAB_THROTTLE ?= 0
.PHONY: rollout-check
rollout-check: collection
	$(BIN)/python tests/lab/lab.py up --fresh
	flock /tmp/hostdev-lab.lock $(BIN)/molecule converge -s default
	$(BIN)/python tests/lab/lab.py throttle $(LAB_THROTTLE)
	@trap '$(BIN)/python tests/lab/lab.py throttle 0' EXIT; \
	  $(LAB_CFG) MOLECULE_PROJECT_DIRECTORY=$(CURDIR) flock /tmp/hostdev-lab.lock $(BIN)/ansible-playbook \
	  -i $(CURDIR)/tests/lab/.state/inventory.yml extensions/molecule/default/rollout.yml
