# Entry point for the corpus's PyInstaller build of yamllint (tests/corpus/build.sh): the same
# as the `yamllint` console script pip installs.
import sys

from yamllint.cli import run

if __name__ == "__main__":
    sys.exit(run())
