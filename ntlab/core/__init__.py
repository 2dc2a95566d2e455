"""The shared training core: state, loop, evaluation, and the config-to-run path."""
