"""What tests and benchmarks share: the CLI runner, shape datasets, random models, the bad-input corpus, stores."""
