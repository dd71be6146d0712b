"""``genwire generate`` (call the gateway over gRPC) and ``genwire demo`` (the first-run demo)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any


def register(subparsers: Any) -> None:
    """Add this area's subcommands to the ``genwire`` command."""
    gen = subparsers.add_parser(
        "generate",
        help="generate text through the gateway (gRPC)",
        description="Send one request to the gateway over gRPC and print the generated text.",
    )
    gen.add_argument("prompt", help="the prompt")
    gen.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    gen.add_argument("--max-tokens", type=int, help="most tokens to generate")
    gen.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass")
    gen.add_argument("--top-k", type=int, help="top-k sampling (0: off)")
    gen.add_argument("--seed", type=int, help="sampling seed")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--model", default="", help="model name (default: the pipeline's)")
    gen.add_argument("--request-id", default="", help="name the request (idempotency key)")
    gen.add_argument("--target", help="gateway gRPC host:port (default: from settings)")
    gen.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    gen.add_argument("--json", action="store_true", help="print the whole result as JSON")
    gen.set_defaults(func=_generate)

    demo = subparsers.add_parser(
        "demo",
        help="send one demo request and print its text and Jaeger trace link",
        description="Send one request through the whole pipeline; print the text and the "
        "link to its trace in Jaeger.",
    )
    demo.add_argument("--prompt", default=None, help="the demo prompt")
    demo.add_argument("--target", help="gateway gRPC host:port (default: from settings)")
    demo.add_argument("--jaeger", help="Jaeger UI base URL (default: from settings)")
    demo.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the gateway")
    demo.set_defaults(func=_demo)


def _target(args: argparse.Namespace) -> str:
    if args.target:
        return str(args.target)
    from genwire_gateway.config import GatewaySettings

    settings = GatewaySettings()
    return f"{settings.grpc_host}:{settings.grpc_port}"


def _generate(args: argparse.Namespace) -> int:
    from genwire_gateway.client import GenwireClient, GenwireClientError

    params: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop,
        "model": args.model,
        "request_id": args.request_id,
    }

    async def run() -> int:
        async with GenwireClient(_target(args), timeout_s=args.timeout) as client:
            if args.stream:
                async for chunk in client.stream(args.prompt, **params):
                    if args.json:
                        print(json.dumps(asdict(chunk)), flush=True)
                    else:
                        sys.stdout.write(chunk.text)
                        sys.stdout.flush()
                if not args.json:
                    sys.stdout.write("\n")
                return 0
            result = await client.generate(args.prompt, **params)
            print(json.dumps(asdict(result), indent=2) if args.json else result.text)
            return 0

    from genwire.gateway_tls import GatewayTLSError

    try:
        return asyncio.run(run())
    except (GenwireClientError, GatewayTLSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace) -> int:
    from genwire_gateway.demo import DEMO_PROMPT, run_demo

    return run_demo(
        target=args.target,
        jaeger_url=args.jaeger,
        prompt=args.prompt or DEMO_PROMPT,
        ready_wait_s=args.wait,
    )
