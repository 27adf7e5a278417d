# tests/unit/docker.mk — the HTTP client and the docker provider.
# test_docker needs an engine: tests/services/podman/podman-service.sh or
# tests/services/dockerd/dockerd-service.sh (`make unit` runs it under both)
# sets SBX_TEST_DOCKER_SOCK / SBX_TEST_DOCKER_IMAGE; without them it exits 77.
TEST_BINS += $(BUILD)/tests/test_http $(BUILD)/tests/test_docker

$(BUILD)/tests/test_http: $(BUILD)/obj/worker/http.o
$(BUILD)/tests/test_docker: $(BUILD)/obj/worker/http.o $(BUILD)/obj/worker/provider_docker.o \
                            $(BUILD)/obj/worker/docker_tar.o $(BUILD)/obj/worker/docker_logs.o \
                            $(BUILD)/obj/tests/unit/conformance.o
