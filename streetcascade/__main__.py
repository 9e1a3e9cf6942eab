import sys

from streetcascade.cli import main

sys.exit(main())
