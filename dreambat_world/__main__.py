"""``python -m dreambat_world demo ...``: the end-to-end demo on the mini-world."""

import argparse
import sys
from collections.abc import Sequence

from dreambat.errors import DreambatError
from dreambat.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreambat_world", description="The dreambat mini-world.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="end-to-end demo on the mini-world's backbone and bundled data")
    demo.add_argument("--output_dir", default="outputs/demo", help="where everything is written")
    demo.add_argument("--steps", type=int, default=None,
                      help="training steps of both LoRAs (default: dreambat_world.demo.DEMO_STEPS, 800)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the whole demo")
    demo.add_argument("--max_candidates", type=int, default=None, help="score only the first N backbone images")
    demo.add_argument("--inference_steps", type=int, default=25, help="sampler steps of samples and metrics")
    demo.add_argument("--num_prompts", type=int, default=8, help="world prompts the metrics generate images for")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from .demo import DEMO_STEPS, run_demo

    try:
        run_demo(args.output_dir, steps=args.steps or DEMO_STEPS, seed=args.seed, max_candidates=args.max_candidates,
                 inference_steps=args.inference_steps, num_prompts=args.num_prompts)
    except DreambatError as exc:
        print(f"python -m dreambat_world {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
