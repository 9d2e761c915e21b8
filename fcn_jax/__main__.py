import sys

from fcn_jax.cli import main

sys.exit(main())
