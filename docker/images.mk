# docker/images.mk — `make images`: the sbx images, built with Podman on a
# Debian 12 base made from Debian's packages (docker/base-image.sh), no
# registry involved. Included by the Makefile.
#
#   make images                  all five, tagged localhost/sbx-<name>:latest
#   make images IMAGES=sbx-worker   just some
#
# Each target of docker/Dockerfile is one image. Podman's layer cache makes
# a second run quick: the base is a cached tarball, the package layers
# depend only on the Dockerfile, and a source edit rebuilds from the
# build stage's `COPY . .` on. The Kafka image takes its jars from the
# cache of tests/services/fetch-kafka.sh (fetched on the first run).

IMAGES      ?= sbx-worker sbx-agent sbx-kafka sbx-redis sbx-postgres
IMAGE_TAG   ?= latest
PODMAN      ?= podman

.PHONY: images base-image
base-image:
	@sh docker/base-image.sh >/dev/null

# The build stage is tagged too (localhost/sbx-build), so that its layers,
# the costly ones (compiler and -dev packages), are not dangling; what is
# dangling afterwards is an older build superseded by this one, pruned
# here (only images made from our base: they carry its sbx.base.key label),
# so repeated builds do not fill the disk.
images: base-image
	@set -e; for t in build $(IMAGES); do \
	    ctx=; \
	    if [ $$t = sbx-kafka ]; then ctx="--build-context kafka-libs=$$(sh tests/services/fetch-kafka.sh)"; fi; \
	    n=$$t; [ $$t = build ] && n=sbx-build; \
	    echo "images: building localhost/$$n:$(IMAGE_TAG)"; \
	    $(PODMAN) build --quiet --layers -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
	        --target $$t $$ctx -t localhost/$$n:$(IMAGE_TAG) . >/dev/null; \
	done
	@$(PODMAN) image prune -f --filter label=sbx.base.key >/dev/null
	@$(PODMAN) images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^localhost/sbx-' | grep -v sbx-build | sort
