"""Which tuning methods there are and which of them one batch can mix (no torch: the workflow's job
planning, distreach.jobs, reads this as the engine does)."""

METHODS = ("soft", "hard", "hybrid", "gcg")
DEFAULT_METHOD = "soft"  # a tuning setting without ``method``
# the tuning settings in which rows of one batch may differ (which positions are soft), and the
# methods whose rows the engine mixes that way (distreach.engine.tune_groups): soft, hybrid and hard
# prompts of one length and otherwise equal settings
ROW_SETTINGS = ("method", "n_soft", "soft_positions")
ROW_METHODS = ("soft", "hard", "hybrid")
