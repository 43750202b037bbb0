import sys

from kt_swarm.cli import main

sys.exit(main())
