# tests/unit/docker.mk — the HTTP client and the docker provider.
# test_docker and test_docker_session (sessions) need an engine:
# tests/services/podman/podman-service.sh or tests/services/dockerd/dockerd-service.sh
# (`make unit` runs them under both) sets SBX_TEST_DOCKER_SOCK / SBX_TEST_DOCKER_IMAGE;
# without them they exit 77.
TEST_BINS += $(BUILD)/tests/test_http $(BUILD)/tests/test_docker $(BUILD)/tests/test_docker_session

$(BUILD)/tests/test_http: $(BUILD)/obj/worker/http.o
$(BUILD)/tests/test_docker: $(BUILD)/obj/worker/http.o $(BUILD)/obj/worker/provider_docker.o \
                            $(BUILD)/obj/worker/docker_tar.o $(BUILD)/obj/worker/docker_logs.o \
                            $(BUILD)/obj/tests/unit/conformance.o
$(BUILD)/tests/test_docker_session: $(BUILD)/obj/worker/http.o $(BUILD)/obj/worker/provider_docker.o \
                            $(BUILD)/obj/worker/docker_tar.o $(BUILD)/obj/worker/docker_logs.o \
                            $(BUILD)/obj/tests/unit/conformance.o
