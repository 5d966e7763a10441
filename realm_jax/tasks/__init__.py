"""The task runners: main dispatches config.task to the `run(config)` of
the module of that name here (eval: evaluate.py)."""
