# tests/unit/docker_remote.mk — the docker provider's remote hosts (https://
# with client certificates, ssh:// through a tunnel) against a dockerd and an
# sshd of their own (tests/services/remote-docker/remote-docker.sh, ~3 s to
# set up), the tunnel leading to a Podman service (podman-service.sh, ~0.6 s)
# until dockerd takes the provider's job files. ~9 s in all. Not in
# TEST_BINS: `make unit`'s services are not these; `make unit-remote` runs
# it, and `make test` includes that.
REMOTE_DOCKER_TEST := $(BUILD)/tests/test_docker_remote

.PHONY: unit-remote
unit-remote: $(REMOTE_DOCKER_TEST)
	tests/services/podman/podman-service.sh -- \
	    tests/services/remote-docker/remote-docker.sh -- $(REMOTE_DOCKER_TEST)

test: unit-remote
