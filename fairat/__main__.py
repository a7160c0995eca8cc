"""`python -m fairat ...` is the same as the `fairat` console script."""

from fairat.cli import main

raise SystemExit(main())
