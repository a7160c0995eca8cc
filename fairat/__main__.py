"""`python -m fairat ...` is the same as the `fairat` console script."""

from fairat.fronts.cli import main

raise SystemExit(main())
