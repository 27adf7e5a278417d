# tests/unit/jobsm.mk — the job state machine (worker/job.c) driven against
# the real Redis and PostgreSQL of the test services, with a test provider.
TEST_BINS += $(BUILD)/tests/test_job
$(BUILD)/tests/test_job: $(BUILD)/obj/tests/unit/svc.o
