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

images: base-image
	@set -e; for t in $(IMAGES); do \
	    ctx=; \
	    if [ $$t = sbx-kafka ]; then ctx="--build-context kafka-libs=$$(sh tests/services/fetch-kafka.sh)"; fi; \
	    echo "images: building localhost/$$t:$(IMAGE_TAG)"; \
	    $(PODMAN) build --quiet --layers -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
	        --target $$t $$ctx -t localhost/$$t:$(IMAGE_TAG) . >/dev/null; \
	done
	@$(PODMAN) images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^localhost/sbx-' | sort
