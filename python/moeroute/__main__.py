"""Entry point of `python -m moeroute`: the pipeline walk-through (`walkthrough [args]`, the default),
or `demo [args]`, which trains a small MoE classifier on the digits dataset."""

import sys

args = sys.argv[1:]
if args[:1] == ["demo"]:
    from ._demo import main
else:
    from ._walkthrough import main
sys.exit(main(args[1:] if args[:1] in (["demo"], ["walkthrough"]) else args))
