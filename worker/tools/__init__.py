"""Tools that are not the worker: the demo, embedded servers, brokers for tests and benchmarks,
the traffic simulator, benchmarks and their baselines."""
