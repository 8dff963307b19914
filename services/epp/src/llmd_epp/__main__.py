import sys

from llmd_epp.server import main

sys.exit(main())
