"""Research tools: report grids, the feature bank and the default model's training. Never imported
by ``ser_worker`` or ``cli``."""
