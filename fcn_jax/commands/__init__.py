"""One module per `fcn-jax` subcommand (see `fcn_jax.cli`)."""
