import sys

from lsproxy.cli import main

sys.exit(main())
