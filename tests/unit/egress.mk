# tests/unit/egress.mk — the egress policy of networked builds
# (common/egress.c): entry syntax, the built-in ranges, the operator's lists
# and the nftables ruleset, which real nft checks in a namespace of its own
# when the test runs as root.
TEST_BINS += $(BUILD)/tests/test_egress
