"""The environment every Flower process we start runs with."""

# Flower would otherwise check for updates, send telemetry, and `uv sync` the project's dependencies into a fresh
# environment (pulling a CUDA build of torch).
FLOWER_ENVIRONMENT = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning: this machine has no GPU to hide
    # Ray's (absl's) failure-signal handler also catches SIGTERM: it would abort the process with a C stack dump
    # instead of letting the simulation stop cleanly (simulation/stopping.py).
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
}
