import sys

from robustbench_iqa.cli import main

sys.exit(main())
