import sys

from jaxtok.cli import main

sys.exit(main())
