"""Entry point of `python -m moeroute`: the pipeline walk-through (`walkthrough [args]`, the default),
or `demo [args]`, which trains a small MoE classifier on the digits dataset (needs the demo extra)."""

import sys

args = sys.argv[1:]
if args[:1] == ["demo"]:
    try:
        import torch  # noqa: F401
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as missing:
        sys.exit(f"python -m moeroute demo needs PyTorch, scikit-learn and matplotlib ({missing}): "
                 f'pip install "moeroute[demo]"')
    from ._demo import main
else:
    from ._walkthrough import main
sys.exit(main(args[1:] if args[:1] in (["demo"], ["walkthrough"]) else args))
