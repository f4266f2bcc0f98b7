"""The `baton` command line."""
from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from engine.demo import run_demo

    run_demo(args.cache_dir, args.max_tokens)
    return 0


def _cmd_chat(args) -> int:
    from engine import LLM, SamplingParams
    from engine.demo import print_output

    llm = LLM(args.model, device=args.device, dtype=args.dtype, attention_backend=args.attention_backend)
    content = [{"type": "image", "image": path} for path in args.image or []]
    content.append({"type": "text", "text": args.prompt})
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    print_output("chat", llm.chat([{"role": "user", "content": content}], params)[0])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baton", description="Baton: a two-model VLM inference engine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the engine on an embedded synthetic model pair and a generated image")
    demo.add_argument("--cache-dir", default=None, help="where synthetic checkpoints live (default ~/.cache/baton)")
    demo.add_argument("--max-tokens", type=int, default=24)
    demo.set_defaults(func=_cmd_demo)

    chat = sub.add_parser("chat", help="one chat turn with a local checkpoint directory")
    chat.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    chat.add_argument("--image", action="append", help="image path (repeatable)")
    chat.add_argument("--prompt", required=True)
    chat.add_argument("--max-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--dtype", default="auto")
    chat.add_argument("--attention-backend", default="auto")
    chat.set_defaults(func=_cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from engine.errors import BatonError

    try:
        return args.func(args)
    except BatonError as e:
        print(f"baton: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
