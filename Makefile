# Thin wrappers over ./dev (which installs uv if needed and syncs the workspace from uv.lock).
# Extra arguments: make bench ARGS="--quick", make test ARGS="-k idempotency".
.PHONY: run test images bench bench-readme

run:
	./dev run $(ARGS)

test:
	./dev test $(ARGS)

# The four service images, built with buildah (docs/operations.md, "Container images").
images:
	./dev images $(ARGS)

# The whole-pipeline benchmark: prints a table against the targets and writes
# bench/results/latest.json; bench-readme regenerates docs/performance.md's figures from it.
bench:
	./dev bench $(ARGS)

bench-readme:
	./dev bench readme
