"""python -m zoo_core: the zoo command (handy under torchrun: torchrun ... -m zoo_core train ENTRY)."""
import sys

from zoo_core.cli import main

sys.exit(main())
