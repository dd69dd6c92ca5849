"""Run the benchmark suite: `python -m bench [--quick] [--only e2e,chain,...]`."""

from __future__ import annotations

from bench.run import main

if __name__ == "__main__":
    main()
