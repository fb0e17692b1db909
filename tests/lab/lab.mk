# QEMU lab (tests/lab/README.md). Included by the top Makefile; uses its VENV/BIN/BUILD/COLL variables.
# make lab-up | lab-down | lab-status | lab-ssh HOST=intel [CMD='lspci -nnk'] | lab-reset HOST=intel
# make lab-console HOST=amd | lab-image | lab-test [TARGETS='lab_smoke ...']
LAB := $(BIN)/python tests/lab/lab.py
TARGETS ?=

.PHONY: lab-image lab-up lab-down lab-status lab-ssh lab-reset lab-console lab-wait lab-test

lab-image:
	tests/lab/build-image

lab-up: venv
	$(LAB) up $(HOST)

lab-down: venv
	$(LAB) down $(HOST)

lab-status: venv
	$(LAB) status

lab-ssh: venv
	@test -n "$(HOST)" || { echo "usage: make lab-ssh HOST=intel|amd|noiommu [CMD='...']" >&2; exit 2; }
	$(LAB) ssh $(HOST) $(CMD)

lab-reset: venv
	@test -n "$(HOST)" || { echo "usage: make lab-reset HOST=intel|amd|noiommu" >&2; exit 2; }
	$(LAB) reset $(HOST)

lab-console: venv
	@test -n "$(HOST)" || { echo "usage: make lab-console HOST=intel|amd|noiommu" >&2; exit 2; }
	$(LAB) console $(HOST)

lab-wait: venv
	@test -n "$(HOST)" || { echo "usage: make lab-wait HOST=intel|amd|noiommu" >&2; exit 2; }
	$(LAB) wait $(HOST)

# Pristine guests, every lab target, then the role's molecule scenarios (default, cleanup) over the whole fleet;
# the lab always goes down again (so the cleanup scenario skips its final reset). TARGETS='a b' runs only those targets (no molecule).
lab-test: collection
	@trap '$(LAB) down' EXIT; \
	  $(LAB) up --fresh && $(BIN)/python tests/lab/run-targets $(TARGETS) && \
	  if [ -z "$(TARGETS)" ]; then export HOSTDEV_LAB_GOING_DOWN=1 && $(MOLECULE_TEST); fi
