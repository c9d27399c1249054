import sys

from fedseqrec.cli import main

sys.exit(main())
