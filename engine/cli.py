"""The `baton` command line."""
from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from baton.engine.demo import run_demo

    run_demo(args.cache_dir, args.max_tokens)
    return 0


def _cmd_chat(args) -> int:
    from baton import LLM, SamplingParams
    from baton.engine.demo import print_output

    llm = LLM(args.model, device=args.device, dtype=args.dtype, attention_backend=args.attention_backend)
    content = [{"type": "image", "image": path} for path in args.image or []]
    content.append({"type": "text", "text": args.prompt})
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    print_output("chat", llm.chat([{"role": "user", "content": content}], params)[0])
    return 0


def _cmd_run(args) -> int:
    from baton import MultiAgent
    from baton.engine.demo import print_cache_figures, print_stages

    common = dict(device=args.device, dtype=args.dtype, attention_backend=args.attention_backend)
    team = MultiAgent(args.small, args.large, reason_max_tokens=args.reason_max_tokens,
                      brief_max_tokens=args.brief_max_tokens, selector=args.selector, budget=args.budget,
                      segments=args.segments, kv_cache_bytes=args.kv_cache_bytes, **common)
    content = [{"type": "image", "image": path} for path in args.image or []]
    content.append({"type": "text", "text": args.question})
    res = team.run([{"role": "user", "content": content}], mode=args.mode)
    print(f"answer: {res.answer}")
    print(f"path  : {res.mode}  ({res.seconds * 1e3:.0f} ms)")
    if res.transferred_token_ids:
        print(f"transferred {len(res.transferred_token_ids)} tokens: {res.transferred_text!r}")
    print_stages(res)
    for name, eng in team.engines.items():
        print_cache_figures(name, eng)
    if args.trace:
        MultiAgent.export_trace([res], args.trace)
        print(f"trace : {args.trace} (open in chrome://tracing or ui.perfetto.dev)")
    return 0


def _delegate(module: str):
    """A subcommand whose module has `run_from_args(args)`; imported only when it runs."""

    def run(args) -> int:
        import importlib

        return importlib.import_module(module).run_from_args(args)

    return run


def _budget(text: str):
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


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

    run = sub.add_parser("run", help="multi-agent inference with a small and a large checkpoint")
    run.add_argument("--small", required=True, help="small model checkpoint directory")
    run.add_argument("--large", required=True, help="large model checkpoint directory")
    run.add_argument("--image", action="append", help="image path (repeatable)")
    run.add_argument("--question", required=True)
    run.add_argument("--mode", default="auto",
                     choices=["small", "large", "small-reason", "large-reason", "transfer", "auto"])
    run.add_argument("--selector", default="full", choices=["full", "truncate", "entropy", "attention"])
    run.add_argument("--budget", type=_budget, default=None, help="tokens (int) or fraction of the reasoning")
    run.add_argument("--segments", default="none", choices=["none", "word", "step"])
    run.add_argument("--reason-max-tokens", type=int, default=512)
    run.add_argument("--brief-max-tokens", type=int, default=16)
    run.add_argument("--kv-cache-bytes", type=int, default=None, help="one KV budget split between the models")
    run.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace JSON here")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--attention-backend", default="auto")
    run.set_defaults(func=_cmd_run)

    from baton.engine.serve_command import add_arguments as add_serve_arguments

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (FastAPI + uvicorn; pip install baton[serve])")
    add_serve_arguments(serve)
    serve.set_defaults(func=_delegate("baton.engine.serve_command"))

    from baton.engine.analysis.command import add_arguments as add_analyze_arguments

    analyze = sub.add_parser("analyze", help="latency analysis of VLM components with a calibrated cost model "
                                             "(--quick: a few minutes on a CPU)")
    add_analyze_arguments(analyze)
    analyze.set_defaults(func=_delegate("baton.engine.analysis.command"))

    from baton.engine.eval_command import add_arguments as add_eval_arguments

    evaluate = sub.add_parser("eval", help="accuracy and latency of every mode and selector on held-out "
                                           "SynthVQA items with the trained pair (--quick: under 2 minutes)")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=_delegate("baton.engine.eval_command"))

    from baton.engine.info_command import add_arguments as add_info_arguments

    info = sub.add_parser("info", help="CPU flags, the native kernel paths chosen here, the routing cache, "
                                       "torch and oneDNN versions")
    add_info_arguments(info)
    info.set_defaults(func=_delegate("baton.engine.info_command"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from baton.errors import BatonError

    try:
        return args.func(args)
    except BatonError as e:
        print(f"baton: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
